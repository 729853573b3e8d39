"""Per-dataset outputs, failure isolation and resumption (issue 12 item 4).

Acceptance (through `python evaluate.py` in a subprocess): one of three eval datasets is broken → the two
others are scored and written, the failure is listed and the exit code is non-zero; after the fix, the
same command scores only the missing dataset. In-process tests cover what "same model" means: a changed
weight, setting or dataset re-scores; nothing else does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules.schema import EvalRow, Item
from evaluation.engine import EvalDataset
from evaluation.runner import EvaluationFailed, build_suite, score
from evaluation.store import ScoreStore

ROOT = Path(__file__).resolve().parents[2]


def _suite(rows_b: int = 4, image_root=None, broken_image: bool = False):
    a = [EvalRow("A", i, Item(f"query {i}"), tuple(Item(f"cand {i}-{j}") for j in range(4))) for i in range(5)]
    b = [EvalRow("B", i, Item(f"question {i}"), (Item("yes"), Item("no"), Item("maybe"))) for i in range(rows_b)]
    c = [EvalRow("C", i, Item("<|image_1|> find it", "img1.png") if broken_image and i == 1 else Item(f"find {i}"),
                 (Item("cand x"), Item("cand y"))) for i in range(3)]
    return [EvalDataset("A", "Retrieval", "IND", a), EvalDataset("B", "VQA", "OOD", b),
            EvalDataset("C", "Grounding", "OOD", c, image_root=image_root)]


def test_score_and_pred_files_hold_what_the_reference_users_expect(fake_embedder, tmp_path):
    emb = fake_embedder()
    r = score(emb, _suite(), {"batch_size": 3}, "my-model", tmp_path)
    store = ScoreStore(tmp_path)
    for ds in _suite():
        record = json.loads(store.score_path(ds.name).read_text())
        d = r["datasets"][ds.name]
        assert record["result"] == d and record["model"] == "my-model" and record["dataset"] == ds.name
        assert record["num_pred"] == len(ds.rows) and record["acc"] == pytest.approx(d["precision@1"] / 100)
        assert record["hit@1"] == record["acc"] and record["num_correct"] == round(record["acc"] * len(ds.rows))
        assert set(record["fingerprint"]) == {"model", "data", "settings", "rules"}
        preds = [json.loads(line) for line in store.pred_path(ds.name).read_text().splitlines()]
        assert [p["row"] for p in preds] == [row.row for row in ds.rows]
        for p, row in zip(preds, ds.rows):  # against a naive recomputation from the fake's vectors
            q = emb(emb.input_builder([row.query.text], [None], "query"))[0]
            s = torch.stack([emb(emb.input_builder([c.text], [None], "target"))[0] @ q for c in row.candidates])
            assert p["pred"] == int(torch.argmax(s)) and p["hit"] == (p["pred"] == 0)
            assert p["score_gt"] == pytest.approx(float(s[0]), abs=1e-6)
            assert p["score_pred"] == pytest.approx(float(s.max()), abs=1e-6)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["failed"] == {} and set(results["datasets"]) == {"A", "B", "C"}


def test_same_model_is_reused_and_any_change_rescores(fake_embedder, tmp_path):
    emb = fake_embedder()
    first = score(emb, _suite(), {"batch_size": 3}, "m", tmp_path)
    emb.calls = {"query": 0, "target": 0}
    again = score(emb, _suite(), {"batch_size": 7, "num_workers": 0}, "m", tmp_path)  # batch size is not identity
    assert emb.calls == {"query": 0, "target": 0} and again["_reused"] == ["A", "B", "C"]
    assert {k: again[k] for k in ("overall", "datasets")} == {k: first[k] for k in ("overall", "datasets")}

    score(emb, _suite(rows_b=3), {}, "m", tmp_path)  # dataset B's rows changed: only B is scored again
    assert emb.calls == {"query": 3, "target": 3}

    emb.calls = {"query": 0, "target": 0}
    score(emb, _suite(rows_b=3), {"tie_rule": "strict"}, "m", tmp_path)  # a scoring setting changed: all again
    assert emb.calls["query"] == 5 + 3 + 3

    emb.calls = {"query": 0, "target": 0}
    with torch.no_grad():
        emb.dummy += 1  # a weight changed
    again = score(emb, _suite(rows_b=3), {"tie_rule": "strict"}, "m", tmp_path)
    assert emb.calls["query"] == 11 and again["_reused"] == []

    emb.calls = {"query": 0, "target": 0}
    ScoreStore(tmp_path).score_path("A").write_text("{ half a fi")  # an interrupted write of an older version
    score(emb, _suite(rows_b=3), {"tie_rule": "strict"}, "m", tmp_path)
    assert emb.calls["query"] == 5

    emb.calls = {"query": 0, "target": 0}
    score(emb, _suite(rows_b=3), {"tie_rule": "strict", "resume": False}, "m", tmp_path)
    assert emb.calls["query"] == 11


def test_a_failing_dataset_costs_the_others_nothing(fake_embedder, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    emb = fake_embedder()
    with pytest.raises(EvaluationFailed, match=r"1 eval dataset\(s\) failed.*\n  - C: DataError: dataset 'C', row 1"):
        score(emb, _suite(image_root=images, broken_image=True), {}, "m", tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["datasets"]) == {"A", "B"} and list(results["failed"]) == ["C"]
    assert "img1.png" in results["failed"]["C"]
    assert "**1 dataset(s) failed and are not in the means above**" in (tmp_path / "out" / "results.md").read_text()
    assert not ScoreStore(tmp_path / "out").score_path("C").exists()

    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "img1.png")
    emb.calls = {"query": 0, "target": 0}
    r = score(emb, _suite(image_root=images, broken_image=True), {}, "m", tmp_path / "out")
    assert r["_reused"] == ["A", "B"] and emb.calls == {"query": 3, "target": 2}  # C alone
    assert set(r["datasets"]) == {"A", "B", "C"} and r["failed"] == {}


def test_a_dataset_that_cannot_be_read_is_listed_and_the_others_scored(fake_embedder, bundled_root, tmp_path):
    source = tmp_path / "eval"
    shutil.copytree(bundled_root / "eval", source)
    (source / "ColorCls" / "test-00000-of-00001.parquet").write_bytes(b"")  # a 0-byte parquet
    suite = build_suite({"source": str(source), "image_root": str(source), "max_rows": 2,
                         "datasets": {"ColorCls": {"meta_task": "Classification", "split": "OOD"},
                                      "CaptionParaphrase": {"meta_task": "Retrieval", "split": "OOD"}}})
    assert suite[0].error and not suite[0].rows and suite[1].error is None
    with pytest.raises(EvaluationFailed) as caught:
        score(fake_embedder(), suite, {}, "m", tmp_path / "out")
    assert list(caught.value.failed) == ["ColorCls"]
    assert list(json.loads((tmp_path / "out" / "results.json").read_text())["datasets"]) == ["CaptionParaphrase"]


def test_skipped_rows_and_candidate_side_reach_every_output(fake_embedder, tmp_path):
    suite = _suite()
    suite[1].skipped = {"empty item": 2}
    r = score(fake_embedder(), suite, {}, "m", tmp_path)
    assert r["datasets"]["B"]["skipped"] == {"empty item": 2} and r["datasets"]["A"]["skipped"] == {}
    assert json.loads((tmp_path / "results.json").read_text())["datasets"]["B"]["skipped"] == {"empty item": 2}
    assert json.loads(ScoreStore(tmp_path).score_path("B").read_text())["result"]["skipped"] == {"empty item": 2}
    assert "reader skipped empty item: 2" in (tmp_path / "results.md").read_text()

    # candidate_side is part of the data fingerprint: switching it re-scores that dataset
    emb = fake_embedder(side_dependent=True)
    score(emb, _suite(), {}, "m2", tmp_path / "side")
    switched = _suite()
    switched[0].candidate_side = "query"
    emb.calls = {"query": 0, "target": 0}
    score(emb, switched, {}, "m2", tmp_path / "side")
    assert emb.calls == {"query": 5 + 20, "target": 0}  # A again: its queries, and its candidates as queries


def _snapshot(bundled_root: Path, tmp_path: Path) -> Path:
    source = tmp_path / "eval"
    shutil.copytree(bundled_root / "eval", source)
    return source


def _evaluate(source: Path, out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "evaluate.py", "device=cpu", f"eval_data.source={source}", f"eval_data.image_root={source}",
           "eval_data.bundled=null", "eval_data.max_rows=3", "~eval_data.datasets", f"+eval_data.datasets={THREE}",
           f"hydra.run.dir={out}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


THREE = ("{ShapeCls:{meta_task:Classification,split:IND},CountVQA:{meta_task:VQA,split:OOD},"
         "CaptionParaphrase:{meta_task:Retrieval,split:OOD}}")


def _break_shapecls(source: Path) -> tuple[Path, Path]:
    """Hide the query image of ShapeCls row 0; returns (image, hidden) so the test can put it back."""
    import pyarrow.parquet as pq

    row0 = pq.read_table(next((source / "ShapeCls").glob("*.parquet"))).to_pylist()[0]
    image = source / row0["qry_img_path"]
    hidden = image.with_suffix(".hidden")
    image.rename(hidden)
    return image, hidden


def test_evaluate_run_with_a_broken_dataset_raises_after_scoring_the_others(compose_cfg, bundled_root, tmp_path):
    """The fast, in-process twin of the subprocess test below (evaluate.run lets EvaluationFailed propagate)."""
    from evaluation import job as evaluate

    source = _snapshot(bundled_root, tmp_path)
    image, hidden = _break_shapecls(source)
    overrides = ["device=cpu", f"eval_data.source={source}", f"eval_data.image_root={source}",
                 "eval_data.bundled=null", "eval_data.max_rows=3", "~eval_data.datasets",
                 f"+eval_data.datasets={THREE}"]
    with pytest.raises(EvaluationFailed) as caught:
        evaluate.run(compose_cfg("evaluate", overrides))
    assert list(caught.value.failed) == ["ShapeCls"]
    out = tmp_path / "run"
    assert {p.name for p in out.glob("*_score.json")} == {"CountVQA_score.json", "CaptionParaphrase_score.json"}
    hidden.rename(image)
    r = evaluate.run(compose_cfg("evaluate", overrides))
    assert r["_reused"] == ["CaptionParaphrase", "CountVQA"] and r["failed"] == {} and len(r["datasets"]) == 3


@pytest.mark.slow
def test_evaluate_py_lists_a_broken_dataset_exits_nonzero_and_resumes(bundled_root, tmp_path):
    source = _snapshot(bundled_root, tmp_path)
    image, hidden = _break_shapecls(source)
    out = tmp_path / "run"

    broken = _evaluate(source, out)
    assert broken.returncode != 0, broken.stdout[-2000:]
    assert "1 eval dataset(s) failed" in broken.stderr and "ShapeCls: DataError: dataset 'ShapeCls', row 0" in broken.stderr
    assert "CountVQA" in broken.stdout and "CaptionParaphrase" in broken.stdout  # the table of what was scored
    results = json.loads((out / "results.json").read_text())
    assert set(results["datasets"]) == {"CountVQA", "CaptionParaphrase"} and list(results["failed"]) == ["ShapeCls"]
    kept = {n: (out / f"{n}_score.json").stat().st_mtime_ns for n in ("CountVQA", "CaptionParaphrase")}

    hidden.rename(image)  # the fix
    fixed = _evaluate(source, out)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "reusing 2 dataset score(s)" in fixed.stdout and "CountVQA, CaptionParaphrase" in fixed.stdout
    assert {n: (out / f"{n}_score.json").stat().st_mtime_ns for n in kept} == kept  # not scored again
    results = json.loads((out / "results.json").read_text())
    assert set(results["datasets"]) == {"ShapeCls", "CountVQA", "CaptionParaphrase"} and results["failed"] == {}
