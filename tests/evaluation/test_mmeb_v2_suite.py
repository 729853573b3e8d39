"""MMEB-V2 on the shared evaluation machinery: the bundled offline suite scored with the tiny Qwen2-VL and Qwen3-VL
(image, video and visual-document datasets, own-candidate and whole-corpus ranking), outputs in the reference's
report shape, resumption, named failures, per-modality aggregation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from datamodules.mmeb_v2 import MODALITIES
from embedders import Embedder
from evaluation.engine import EvalDataset
from evaluation.mmeb_v2 import aggregate_v2, report
from evaluation.retrieval import ranking_metrics
from evaluation.runner import EvaluationFailed, build_suite, compatible, score
from evaluation.store import dataset_fingerprint

ROOT = Path(__file__).resolve().parents[2]
EVAL_CFG = {"batch_size": 16, "num_workers": 0, "progress": False}


def _eval_data(root: Path, queries: int = 3) -> dict:
    cfg = OmegaConf.create({"eval_data": OmegaConf.load(ROOT / "conf/eval_data/mmeb_v2_bundled.yaml")})
    cfg.eval_data.bundled_v2.root = str(root)
    cfg.eval_data.bundled_v2.queries_per_dataset = queries
    return OmegaConf.to_container(cfg, resolve=True)["eval_data"]


@pytest.fixture(scope="module")
def bundled(tmp_path_factory):
    return _eval_data(tmp_path_factory.mktemp("v2") / "bundled_v2")


@pytest.fixture(scope="module")
def embedders():
    torch.manual_seed(0)
    return {"qwen2_vl": Embedder.build("qwen2_vl", config={}), "qwen3_vl": Embedder.build("qwen3_vl", config={})}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_bundled_suite_scores_every_dataset(bundled, embedders, family, tmp_path, capsys):
    suite = build_suite(bundled)
    assert {ds.modality for ds in suite} == set(MODALITIES) and not [ds.error for ds in suite if ds.error]
    assert {ds.name for ds in suite if ds.task is not None} == {"ShapeMotionCls", "ShapeVideoRet", "ShapeDocs",
                                                                "ShapeSlides"}
    results = score(embedders[family], suite, EVAL_CFG, family, tmp_path)
    printed = capsys.readouterr().out
    for title in ("### Image (hit@1", "### Video (hit@1", "### VisDoc (ndcg_linear@5"):
        assert title in printed
    assert set(results["datasets"]) == {ds.name for ds in suite} and not results["failed"]
    # Overall: mean over datasets (not over modality means); modality scores: mean over their datasets
    scores = {n: d["score"] for n, d in results["datasets"].items()}
    assert results["overall"] == pytest.approx(sum(scores.values()) / len(scores))
    for m in MODALITIES:
        mine = [s for n, s in scores.items() if results["datasets"][n]["modality"] == m]
        assert results["modalities"][m]["score"] == pytest.approx(sum(mine) / len(mine))
    # visdoc: the headline metric recomputed from the written predictions with ranking_metrics
    for ds in suite:
        if ds.modality != "visdoc":
            continue
        preds = [json.loads(line) for line in (tmp_path / f"{ds.name}_pred.jsonl").read_text().splitlines()]
        assert [p["query_id"] for p in preds] == list(ds.task.query_ids)
        again = ranking_metrics([p["prediction"] for p in preds], ds.task.query_ids, ds.task.qrels)
        assert results["datasets"][ds.name]["score"] == pytest.approx(100 * again["ndcg_linear@5"])
        assert json.loads((tmp_path / "visdoc" / f"{ds.name}_score.json").read_text())["ndcg_linear@5"] == \
            pytest.approx(again["ndcg_linear@5"])
    # the reference report shape: {"metadata", "metrics": {modality: {dataset: score dict}}}
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["metadata"]["model_name"] == family
    assert {m: sorted(v) for m, v in written["metrics"].items()} == {
        m: sorted(n for n, d in results["datasets"].items() if d["modality"] == m) for m in MODALITIES}
    assert written["metrics"]["video"]["ShapeVideoQA"]["num_pred"] == 3
    assert "| Model | Overall | Image | Video | VisDoc |" in (tmp_path / "results.md").read_text()
    # resume: a second run into the same directory scores nothing again
    again = score(embedders[family], build_suite(bundled), EVAL_CFG, family, tmp_path)
    assert again["_reused"] == sorted(results["datasets"]) and again["overall"] == pytest.approx(results["overall"])


def test_bad_video_fails_its_dataset_by_name(bundled, embedders, tmp_path):
    """A corrupt video file: its dataset fails with the named error, every other dataset is scored and written."""
    suite = [ds for ds in build_suite(bundled) if ds.name in ("ShapeVideoRet", "ShapeDocs")]
    ret = next(ds for ds in suite if ds.name == "ShapeVideoRet")
    victim = Path(ret.image_root) / ret.task.corpus[1].video
    bad = tmp_path / "media"
    # a copy of the suite's media root with one corrupt video (the module's bundled suite stays intact)
    import shutil

    shutil.copytree(ret.image_root, bad)
    (bad / victim.relative_to(ret.image_root)).write_bytes(b"not a video at all")
    ret.image_root = str(bad)
    with pytest.raises(EvaluationFailed) as err:
        score(embedders["qwen2_vl"], suite, EVAL_CFG, "m", tmp_path / "out")
    message = str(err.value.failed["ShapeVideoRet"])
    assert "DataError" in message and victim.name in message and "cannot be decoded" in message
    assert (tmp_path / "out" / "visdoc" / "ShapeDocs_score.json").is_file()


def test_families_without_video_skip_video_datasets(bundled):
    class Fam:
        name, takes_images, takes_videos = "imgonly", True, False

    class Emb:
        family = Fam()

    suite = build_suite(bundled)
    kept, skipped = compatible(suite, Emb(), skip=True)
    assert sorted(skipped) == sorted(ds.name for ds in suite if ds.modality == "video")
    assert all(ds.modality != "video" for ds in kept)
    with pytest.raises(ValueError, match="takes no videos"):
        compatible(suite, Emb(), skip=False)


def test_aggregate_v2_hand_worked():
    per = {"a": {"modality": "image", "meta_task": "Classification", "score": 60.0},
           "b": {"modality": "image", "meta_task": "Retrieval", "score": 20.0},
           "c": {"modality": "visdoc", "meta_task": "ViDoRe-V1", "score": 10.0}}
    out = aggregate_v2(per)
    assert out["overall"] == pytest.approx(30.0)           # (60 + 20 + 10) / 3, not (40 + 10) / 2
    assert out["modalities"]["image"]["score"] == pytest.approx(40.0)
    assert out["modalities"]["image"]["meta_tasks"] == {"Classification": 60.0, "Retrieval": 20.0}
    assert out["modalities"]["video"] == {"score": None, "datasets": 0, "metric": "hit@1", "meta_tasks": {}}
    entry = {"modality": "visdoc", "num_queries": 2, "metrics": {"ndcg_linear@5": 0.5}, "precision@1": 0.0,
             "meta_task": "VisDoc-OOD", "score": 50.0}
    assert report({"datasets": {"MMLongBench-page": entry}}, "m")["metrics"]["visdoc"] == {
        "MMLongBench-page-fixed": {"ndcg_linear@5": 0.5, "num_pred": 2, "num_data": 2}}


def test_v1_fingerprints_unchanged():
    """MMEB (v1) datasets keep the fingerprints of their existing score files (no needless re-scoring)."""
    import hashlib

    from datamodules.schema import EvalRow, Item

    rows = [EvalRow("D", 0, Item("q <|image_1|>", "a.png"), (Item("x"), Item("y", "b.png")))]
    ds = EvalDataset("D", "Classification", "IND", rows, image_root=None)
    h = hashlib.sha256()
    h.update(json.dumps(["D", "Classification", "IND", "target", ""]).encode())
    h.update(json.dumps([0, "q <|image_1|>", "a.png", [["x", None], ["y", "b.png"]]], ensure_ascii=False).encode())
    h.update(b"\n")
    assert dataset_fingerprint(ds) == h.hexdigest()[:32]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_qwen2vl", "tiny_qwen3vl"])
def test_evaluate_command(tmp_path, model):
    """The README command, as a subprocess: tables printed, outputs in the reference layout."""
    out = subprocess.run(
        [sys.executable, "evaluate.py", "eval_data=mmeb_v2_bundled", f"model={model}",
         f"eval_data.bundled_v2.root={tmp_path / 'bundled_v2'}", f"paths.output_dir={tmp_path / 'out'}",
         "eval.progress=false"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for title in ("### Image", "### Video", "### VisDoc"):
        assert title in out.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["image", "video", "visdoc"]
