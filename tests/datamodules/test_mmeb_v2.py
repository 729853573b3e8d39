"""The MMEB-V2 catalog and its Hydra configs: 78 datasets (36 image, 18 video, 24 visdoc) with the reference's
names, order, parsers, hub sources and metrics; the generated configs equal the catalog and compose."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from datamodules.mmeb_v2 import MMEB_V2, MMEB_V2_EXTRA, MODALITIES, datasets_of, eval_config

CONF = Path(__file__).resolve().parents[2] / "conf"

# Copied from TIGER-AI-Lab/VLM2Vec (main) experiments/report_score_v2.py, `modality2dataset`: the 78 datasets of the
# report, in its order.
REFERENCE_REPORT = {
    "image": [
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
        "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
        "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i",
        "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO", "RefCOCO",
        "RefCOCO-Matching", "Visual7W-Pointing"],
    "video": [
        "K700", "SmthSmthV2", "HMDB51", "UCF101", "Breakfast", "MVBench", "Video-MME", "NExTQA", "EgoSchema",
        "ActivityNetQA", "DiDeMo", "MSR-VTT", "MSVD", "VATEX", "YouCook2", "QVHighlight", "Charades-STA",
        "MomentSeeker"],
    "visdoc": [
        "ViDoRe_arxivqa", "ViDoRe_docvqa", "ViDoRe_infovqa", "ViDoRe_tabfquad", "ViDoRe_tatdqa",
        "ViDoRe_shiftproject", "ViDoRe_syntheticDocQA_artificial_intelligence", "ViDoRe_syntheticDocQA_energy",
        "ViDoRe_syntheticDocQA_government_reports", "ViDoRe_syntheticDocQA_healthcare_industry",
        "ViDoRe_esg_reports_human_labeled_v2", "ViDoRe_biomedical_lectures_v2_multilingual",
        "ViDoRe_economics_reports_v2_multilingual", "ViDoRe_esg_reports_v2_multilingual", "VisRAG_ArxivQA",
        "VisRAG_ChartQA", "VisRAG_MP-DocVQA", "VisRAG_SlideVQA", "VisRAG_InfoVQA", "VisRAG_PlotQA", "ViDoSeek-page",
        "ViDoSeek-doc", "MMLongBench-page", "MMLongBench-doc"],
}
REFERENCE_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}  # report_score_v2.py
# From experiments/public/eval/video.yaml (dataset_parser, eval_type) and src/constant/dataset_hf_path.py.
REFERENCE_VIDEO = {
    "K700": ("video_classification", "global", ("VLM2Vec/Kinetics-700", None, "test")),
    "SmthSmthV2": ("ssv2", "local", ("VLM2Vec/SmthSmthV2", None, "test")),
    "HMDB51": ("video_classification", "global", ("VLM2Vec/HMDB51", None, "test")),
    "UCF101": ("video_classification", "global", ("VLM2Vec/UCF101", None, "test")),
    "Breakfast": ("video_classification", "global", ("VLM2Vec/Breakfast", None, "test")),
    "MSR-VTT": ("msrvtt", "global", ("VLM2Vec/MSR-VTT", "test_1k", "test")),
    "MSVD": ("msvd", "global", ("VLM2Vec/MSVD", None, "test")),
    "DiDeMo": ("didemo", "global", ("VLM2Vec/DiDeMo", None, "test")),
    "YouCook2": ("youcook2", "global", ("lmms-lab/YouCook2", None, "val")),
    "VATEX": ("vatex", "global", ("VLM2Vec/VATEX", None, "test")),
    "QVHighlight": ("moment_retrieval", "local", ("VLM2Vec/QVHighlight", None, "test")),
    "Charades-STA": ("moment_retrieval", "local", ("VLM2Vec/Charades-STA", None, "test")),
    "MomentSeeker": ("momentseeker", "local", ("VLM2Vec/MomentSeeker", None, "test")),
    "Video-MME": ("videomme", "local", ("VLM2Vec/Video-MME", None, "test")),
    "NExTQA": ("nextqa", "local", ("VLM2Vec/NExTQA", "MC", "test")),
    "EgoSchema": ("egoschema", "local", ("VLM2Vec/EgoSchema", "Subset", "test")),
    "MVBench": ("mvbench", "local", ("VLM2Vec/MVBench", None, "train")),
    "ActivityNetQA": ("activitynetqa", "local", ("VLM2Vec/ActivityNetQA", None, "test")),
}
RANKING = {"global": "corpus", "local": "candidates"}


def test_78_datasets_in_the_reference_report_order_and_counts():
    assert len(MMEB_V2) == 78
    for modality in MODALITIES:
        assert [d.name for d in datasets_of(modality)] == REFERENCE_REPORT[modality]
        assert {d.metric for d in datasets_of(modality)} == {REFERENCE_METRIC[modality]}
    assert Counter(d.modality for d in MMEB_V2.values()) == {"image": 36, "video": 18, "visdoc": 24}
    assert not set(MMEB_V2) & set(MMEB_V2_EXTRA)


def test_meta_tasks_and_ranking_modes():
    per = Counter((d.modality, d.meta_task) for d in MMEB_V2.values())
    assert per == {("image", "Classification"): 10, ("image", "VQA"): 10, ("image", "Retrieval"): 12,
                   ("image", "Grounding"): 4, ("video", "Classification"): 5, ("video", "QA"): 5,
                   ("video", "Retrieval"): 5, ("video", "MomentRetrieval"): 3, ("visdoc", "ViDoRe-V1"): 10,
                   ("visdoc", "ViDoRe-V2"): 4, ("visdoc", "VisRAG"): 6, ("visdoc", "VisDoc-OOD"): 4}
    # image tasks rank their own candidates (eval_type local in image.yaml); every visdoc task ranks its corpus
    assert {d.ranking for d in datasets_of("image")} == {"candidates"}
    assert {d.ranking for d in datasets_of("visdoc")} == {"corpus"}
    assert sum(d.in_distribution for d in datasets_of("image")) == 20
    for name, (parser, eval_type, (repo, subset, split)) in REFERENCE_VIDEO.items():
        d = MMEB_V2[name]
        assert (d.parser, d.ranking, d.source, d.subset, d.split) == (parser, RANKING[eval_type], repo, subset, split)
    assert MMEB_V2["SmthSmthV2"].media["num_sample_per_subset"] == 1000
    assert {d.media.get("num_frames", d.media.get("num_video_frames")) for d in datasets_of("video")} == {8}
    assert MMEB_V2["VisRAG_PlotQA"].source == "openbmb/VisRAG-Ret-Test-PlotQA" and MMEB_V2["VisRAG_PlotQA"].split == "train"


@pytest.mark.parametrize("modality", MODALITIES)
def test_generated_configs_equal_the_catalog(modality):
    path = CONF / "eval_data" / f"mmeb_v2_{modality}.yaml"
    assert path.read_text() == eval_config(modality), (
        f"{path} is stale: run `python -m datamodules.mmeb_v2 --write-configs conf/eval_data`")


def test_eval_data_configs_compose_with_all_78(compose_cfg):
    cfg = compose_cfg("evaluate", ["eval_data=mmeb_v2"])
    datasets = cfg.eval_data.datasets
    assert len(datasets) == 78 and list(datasets) == [n for m in MODALITIES for n in REFERENCE_REPORT[m]]
    assert Counter(d.modality for d in datasets.values()) == {"image": 36, "video": 18, "visdoc": 24}
    assert cfg.eval_data.data_basedir.endswith("MMEB-V2") and cfg.eval_data.suite == "mmeb_v2"
    assert datasets["MSR-VTT"].media.num_frames == 8 and datasets["MSR-VTT"].ranking == "corpus"
    video = compose_cfg("train", ["eval_data=mmeb_v2_video", "eval_data.datasets.MSR-VTT.media.num_frames=16"])
    assert len(video.eval_data.datasets) == 18 and video.eval_data.datasets["MSR-VTT"].media.num_frames == 16
    # what load_v2_suite reads from each entry is the catalog's dataset, for all 78
    from omegaconf import OmegaConf

    from datamodules.mmeb_v2 import MMEB_V2
    from datamodules.mmeb_v2_readers import READERS, v2_dataset_from_config

    entries = OmegaConf.to_container(datasets)
    assert [v2_dataset_from_config(n, e) for n, e in entries.items()] == list(MMEB_V2.values())
    # every parser of the 78 has a reader
    assert {d.parser for d in MMEB_V2.values()} <= set(READERS)
