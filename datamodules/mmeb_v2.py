"""The MMEB-V2 catalog (VLM2Vec-V2): the 78 evaluation datasets — 36 image, 18 video, 24 visual-document —
each with its modality, meta-task, reference parser, hub source (repo, config, split), headline metric and
ranking mode, exactly as the reference lists them.

Sources read (TIGER-AI-Lab/VLM2Vec, main): `experiments/public/eval/{image,video,visdoc}.yaml` (parsers,
media roots, frame counts, eval_type), `src/constant/dataset_hf_path.py` (hub repo, config, split),
`src/data/eval_dataset/image_*.py` (image tasks read `ziyjiang/MMEB_Test_Instruct`, split test) and
`experiments/report_score_v2.py` (the 78 datasets that enter the report, their order, and the metric per
modality: image and video hit@1, visdoc ndcg_linear@5).

Ranking modes: "candidates" = the reference's `eval_type: local` (each query ranks its own candidate list);
"corpus" = `eval_type: global` (each query ranks the union of all candidates and the dataset's corpus).
Media paths are relative to the unpacked `TIGER-Lab/MMEB-V2` repo (the reference's `--data_basedir`).

The reference's visdoc.yaml lists three more datasets (the English-only ViDoRe-v2 variants) that its report
leaves out; they are in `MMEB_V2_EXTRA` and not in the 78. The Hydra configs `conf/eval_data/mmeb_v2*.yaml`
are generated from this catalog (`python -m datamodules.mmeb_v2 --write-configs conf/eval_data`); a test
keeps them equal.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .mmeb import MMEB_EVAL_DATASETS

MODALITIES = ("image", "video", "visdoc")
MODALITY_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg_linear@5"}
#: Meta-task groups per modality, in report order (VLM2Vec-V2 paper tables).
META_TASKS = {
    "image": ("Classification", "VQA", "Retrieval", "Grounding"),
    "video": ("Classification", "QA", "Retrieval", "MomentRetrieval"),
    "visdoc": ("ViDoRe-V1", "ViDoRe-V2", "VisRAG", "VisDoc-OOD"),
}
RANKING_MODES = ("candidates", "corpus")

IMAGE_SOURCE = "ziyjiang/MMEB_Test_Instruct"
NUM_FRAMES = 8            # frames per video fed to the model (video.yaml)
MAX_FRAMES_SAVED = 64     # frames first extracted per video (uniformly) before sampling num_frames


@dataclass(frozen=True)
class V2Dataset:
    """One MMEB-V2 evaluation dataset as the reference defines it."""

    name: str                  # name in the report (and of `<name>_score.json`)
    modality: str              # image | video | visdoc
    meta_task: str
    parser: str                # the reference's dataset_parser
    source: str                # hub repo
    split: str
    ranking: str               # candidates | corpus
    subset: str | None = None  # hub config
    language: str | None = None   # ViDoRe-v2 query language filter (only the English-only extras use one)
    reference_name: str | None = None  # the reference config's dataset_name where it differs from `name`
    in_distribution: bool | None = None  # image tasks: IND/OOD as in MMEB v1
    media: dict = field(default_factory=dict)  # roots (relative to the MMEB-V2 repo) and frame counts

    @property
    def metric(self) -> str:
        return MODALITY_METRIC[self.modality]

    def to_config(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "name" and v not in (None, {})}
        out["metric"] = self.metric
        return out


def _image() -> list[V2Dataset]:
    parser_of = {}
    for parser, names in (
        ("image_cls", ("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                       "ImageNet-R", "ObjectNet", "Country211")),
        ("image_qa", ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz",
                      "GQA", "TextVQA")),
        ("image_i2t", ("MSCOCO_i2t", "VisualNews_i2t")),
        ("image_t2i", ("VisDial", "MSCOCO_t2i", "VisualNews_t2i", "WebQA", "EDIS", "Wiki-SS-NQ")),
        ("image_i2i_vg", ("CIRR", "NIGHTS", "OVEN", "FashionIQ", "MSCOCO", "RefCOCO", "RefCOCO-Matching",
                          "Visual7W-Pointing")),
    ):
        parser_of.update(dict.fromkeys(names, parser))
    report_order = (
        "ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A", "ImageNet-R",
        "ObjectNet", "Country211", "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
        "ScienceQA", "VizWiz", "GQA", "TextVQA", "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t",
        "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA", "FashionIQ", "Wiki-SS-NQ", "OVEN", "EDIS", "MSCOCO",
        "RefCOCO", "RefCOCO-Matching", "Visual7W-Pointing",
    )
    return [V2Dataset(name, "image", MMEB_EVAL_DATASETS[name][0], parser_of[name], IMAGE_SOURCE, "test", "candidates",
                      subset=name, in_distribution=MMEB_EVAL_DATASETS[name][1] == "IND",
                      media={"image_root": "image-tasks/"})
            for name in report_order]


def _frames(kind: str, folder: str, **extra) -> dict:
    # frame_saving "step": the video-QA parsers extract frames with their own OpenCV loop (datamodules/video.py)
    return {"video_root": f"video-tasks/videos/{kind}/{folder}", "frame_root": f"video-tasks/frames/{kind}/{folder}",
            "num_frames": NUM_FRAMES, "max_frames_saved": MAX_FRAMES_SAVED, **extra}


def _moment(folder: str, parser: str) -> dict:
    media = {"video_root": "", "clip_root": "", "frame_root": f"video-tasks/frames/video_mret/{folder}",
             "num_negative_clips": 9, "num_video_frames": NUM_FRAMES}
    if parser == "moment_retrieval":
        media.update(num_clip_frames=NUM_FRAMES, max_video_frames_saved=MAX_FRAMES_SAVED, max_clip_frames_saved=8)
    return media


def _video() -> list[V2Dataset]:
    cls, qa, ret, mret = META_TASKS["video"]
    v = "VLM2Vec/"
    return [
        V2Dataset("K700", "video", cls, "video_classification", v + "Kinetics-700", "test", "corpus",
                  reference_name="Kinetics-700", media=_frames("video_cls", "K700")),
        V2Dataset("SmthSmthV2", "video", cls, "ssv2", v + "SmthSmthV2", "test", "candidates",
                  media=_frames("video_cls", "SSv2", num_sample_per_subset=1000)),
        V2Dataset("HMDB51", "video", cls, "video_classification", v + "HMDB51", "test", "corpus",
                  media=_frames("video_cls", "HMDB51")),
        V2Dataset("UCF101", "video", cls, "video_classification", v + "UCF101", "test", "corpus",
                  media=_frames("video_cls", "UCF101")),
        V2Dataset("Breakfast", "video", cls, "video_classification", v + "Breakfast", "test", "corpus",
                  media=_frames("video_cls", "Breakfast")),
        V2Dataset("MVBench", "video", qa, "mvbench", v + "MVBench", "train", "candidates",
                  media=_frames("video_qa", "MVBench", frame_saving="step")),
        V2Dataset("Video-MME", "video", qa, "videomme", v + "Video-MME", "test", "candidates",
                  media=_frames("video_qa", "Video-MME", frame_saving="step")),
        V2Dataset("NExTQA", "video", qa, "nextqa", v + "NExTQA", "test", "candidates", subset="MC",
                  media=_frames("video_qa", "NExTQA", frame_saving="step")),
        V2Dataset("EgoSchema", "video", qa, "egoschema", v + "EgoSchema", "test", "candidates", subset="Subset",
                  media=_frames("video_qa", "EgoSchema", frame_saving="step")),
        V2Dataset("ActivityNetQA", "video", qa, "activitynetqa", v + "ActivityNetQA", "test", "candidates",
                  media=_frames("video_qa", "ActivityNetQA", frame_saving="step")),
        V2Dataset("DiDeMo", "video", ret, "didemo", v + "DiDeMo", "test", "corpus", media=_frames("video_ret", "DiDeMo/")),
        V2Dataset("MSR-VTT", "video", ret, "msrvtt", v + "MSR-VTT", "test", "corpus", subset="test_1k",
                  media=_frames("video_ret", "MSR-VTT/")),
        V2Dataset("MSVD", "video", ret, "msvd", v + "MSVD", "test", "corpus", media=_frames("video_ret", "MSVD/")),
        V2Dataset("VATEX", "video", ret, "vatex", v + "VATEX", "test", "corpus", media=_frames("video_ret", "VATEX/")),
        # The reference reads YouCook2 from lmms-lab (its own VLM2Vec/YouCook2 copy is commented out there).
        V2Dataset("YouCook2", "video", ret, "youcook2", "lmms-lab/YouCook2", "val", "corpus",
                  media=_frames("video_ret", "YouCook2/")),
        V2Dataset("QVHighlight", "video", mret, "moment_retrieval", v + "QVHighlight", "test", "candidates",
                  media=_moment("QVHighlight", "moment_retrieval")),
        V2Dataset("Charades-STA", "video", mret, "moment_retrieval", v + "Charades-STA", "test", "candidates",
                  media=_moment("Charades_STA", "moment_retrieval")),
        V2Dataset("MomentSeeker", "video", mret, "momentseeker", v + "MomentSeeker", "test", "candidates",
                  media=_moment("MomentSeeker", "momentseeker")),
    ]


def _visdoc(name: str, group: str, parser: str, repo: str, split: str = "test", folder: str | None = None,
            language: str | None = None) -> V2Dataset:
    return V2Dataset(name, "visdoc", group, parser, repo, split, "corpus", language=language,
                     media={"image_root": f"visdoc-tasks/{folder or name}"})


def _visdoc_all() -> tuple[list[V2Dataset], list[V2Dataset]]:
    v1, v2, vr, ood = META_TASKS["visdoc"]
    vidore_v1 = [
        ("arxivqa", "arxivqa_test_subsampled_beir"), ("docvqa", "docvqa_test_subsampled_beir"),
        ("infovqa", "infovqa_test_subsampled_beir"), ("tabfquad", "tabfquad_test_subsampled_beir"),
        ("tatdqa", "tatdqa_test_beir"), ("shiftproject", "shiftproject_test_beir"),
        ("syntheticDocQA_artificial_intelligence", "syntheticDocQA_artificial_intelligence_test_beir"),
        ("syntheticDocQA_energy", "syntheticDocQA_energy_test_beir"),
        ("syntheticDocQA_government_reports", "syntheticDocQA_government_reports_test_beir"),
        ("syntheticDocQA_healthcare_industry", "syntheticDocQA_healthcare_industry_test_beir"),
    ]
    main = [_visdoc(f"ViDoRe_{n}", v1, "vidore", f"vidore/{repo}") for n, repo in vidore_v1]
    main += [
        _visdoc("ViDoRe_esg_reports_human_labeled_v2", v2, "vidore", "vidore/esg_reports_human_labeled_v2",
                folder="esg_reports_human_labeled_v2"),
        _visdoc("ViDoRe_biomedical_lectures_v2_multilingual", v2, "vidore", "vidore/biomedical_lectures_v2",
                folder="biomedical_lectures_v2_multilingual"),
        _visdoc("ViDoRe_economics_reports_v2_multilingual", v2, "vidore", "vidore/economics_reports_v2",
                folder="economics_reports_v2_multilingual"),
        _visdoc("ViDoRe_esg_reports_v2_multilingual", v2, "vidore", "vidore/esg_reports_v2",
                folder="esg_reports_v2_multilingual"),
    ]
    main += [_visdoc(f"VisRAG_{n}", vr, "visrag", f"openbmb/VisRAG-Ret-Test-{n}", split="train")
             for n in ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA")]
    # "-page" repos are the reference's fixed copies (its report renames these two to "<name>-fixed").
    main += [
        _visdoc("ViDoSeek-page", ood, "vidore", "VLM2Vec/ViDoSeek-page-fixed"),
        _visdoc("ViDoSeek-doc", ood, "vidore", "VLM2Vec/ViDoSeek"),
        _visdoc("MMLongBench-page", ood, "vidore", "VLM2Vec/MMLongBench-page-fixed"),
        _visdoc("MMLongBench-doc", ood, "vidore", "VLM2Vec/MMLongBench-doc"),
    ]
    extra = [
        _visdoc(f"ViDoRe_{n}_v2", v2, "vidore", f"vidore/{n}_v2", folder=f"{n}_v2", language="english")
        for n in ("biomedical_lectures", "economics_reports", "esg_reports")
    ]
    return main, extra


_VISDOC, MMEB_V2_EXTRA_LIST = _visdoc_all()
#: The 78 datasets of the MMEB-V2 report, in the reference's report order: name -> V2Dataset.
MMEB_V2: dict[str, V2Dataset] = {d.name: d for d in (*_image(), *_video(), *_VISDOC)}
#: In the reference's visdoc.yaml but not in its report (English-only ViDoRe-v2 variants).
MMEB_V2_EXTRA: dict[str, V2Dataset] = {d.name: d for d in MMEB_V2_EXTRA_LIST}


def datasets_of(modality: str) -> list[V2Dataset]:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; MMEB-V2 has {', '.join(MODALITIES)}")
    return [d for d in MMEB_V2.values() if d.modality == modality]


#: Suite-level keys shared by every `conf/eval_data/mmeb_v2*.yaml` (identical in each, so they merge cleanly).
SUITE_KEYS_YAML = """\
suite: mmeb_v2
# The unpacked TIGER-Lab/MMEB-V2 repo (image-tasks/, video-tasks/, visdoc-tasks/): the reference's --data_basedir.
data_basedir: ${paths.data_dir}/MMEB-V2
# A directory holding local snapshots of the per-dataset hub repos as <owner>/<name>/; null = the hub.
hub_snapshots: null
max_rows: null
# Frames per video for every video dataset (null = each dataset's media.num_frames; Qwen3-VL-Embedding used 64).
num_frames: null
# JSON {dataset: [labels]} of the video-classification label sets; null = the reference's
# (video_classification_utils.VIDEOCLS_LABEL_MAPPING), shipped in datamodules/assets/mmeb_v2_video_labels.json.
video_labels: null
bundled: null
"""


def eval_config(modality: str) -> str:
    """The YAML text of `conf/eval_data/mmeb_v2_<modality>.yaml` (suite keys and its `datasets:` block)."""
    import yaml

    body = yaml.safe_dump({"datasets": {d.name: d.to_config() for d in datasets_of(modality)}},
                          sort_keys=False, default_flow_style=None, width=120)
    head = (f"# MMEB-V2 {modality} datasets ({len(datasets_of(modality))}), generated from datamodules/mmeb_v2.py by\n"
            "#   python -m datamodules.mmeb_v2 --write-configs conf/eval_data\n"
            "# Do not edit by hand: tests/datamodules/test_mmeb_v2.py checks this file against the catalog.\n")
    return head + SUITE_KEYS_YAML + body


def write_eval_configs(conf_dir: str | Path) -> list[Path]:
    conf_dir = Path(conf_dir)
    written = []
    for modality in MODALITIES:
        path = conf_dir / f"mmeb_v2_{modality}.yaml"
        path.write_text(eval_config(modality))
        written.append(path)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-configs", metavar="CONF_EVAL_DATA_DIR", help="(re)write conf/eval_data/mmeb_v2_*.yaml")
    args = parser.parse_args(argv)
    if args.write_configs:
        for p in write_eval_configs(args.write_configs):
            print(f"wrote {p}")
    else:
        for m in MODALITIES:
            print(f"{m}: {len(datasets_of(m))} datasets, metric {MODALITY_METRIC[m]}")
        print(f"overall: {len(MMEB_V2)} datasets")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
