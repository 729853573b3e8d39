"""Fault injection (issue 10 item 1): a model with NaN weights is refused, never scored 100; a collapsed model
(all embeddings identical, or identical up to bf16-size noise) is flagged and scored with ties as misses;
ties that decide rows and duplicated ground truths are counted and flagged in the table."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.schema import EvalRow, Item
from evaluation.engine import EvalDataset
from evaluation.mmeb import evaluate_embedder, render_table
from evaluation.runner import EvaluationFailed, score
from evaluation.scoring import precision_at_1


def _suite():
    rows_a = [EvalRow("A", i, Item(f"query {i}"), tuple(Item(f"cand {i}-{j}") for j in range(5))) for i in range(6)]
    rows_b = [EvalRow("B", i, Item(f"question {i}"), (Item("yes"), Item("no"), Item("maybe"))) for i in range(4)]
    return [EvalDataset("A", "Retrieval", "IND", rows_a), EvalDataset("B", "VQA", "OOD", rows_b)]


def test_nan_weights_are_refused_not_scored(compose_cfg, tiny_cfg, tmp_path):
    """The issue's reproduction: a `norm.weight` of a saved Embedder's model.safetensors set to NaN."""
    from safetensors.torch import load_file, save_file

    from embedders import Embedder
    from evaluation import job as evaluate

    torch.manual_seed(0)
    saved = Embedder.build("qwen2_vl", config={}, image={"min_pixels": 56 * 56, "max_pixels": 56 * 56})
    directory = saved.save_pretrained(tmp_path / "embedder")
    weights = load_file(directory / "model.safetensors")
    norm = next(k for k in sorted(weights) if k.endswith("norm.weight") and "visual" not in k)
    weights[norm] = torch.full_like(weights[norm], float("nan"))
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})

    bundled = [o for o in tiny_cfg() if o.startswith("bundled.")]
    cfg = compose_cfg("evaluate", [*bundled, f"embedder_dir={directory}", "eval_data.max_rows=2", "device=cpu"])
    with pytest.raises(EvaluationFailed) as caught:
        evaluate.run(cfg)
    assert len(caught.value.failed) == 9  # every dataset refused …
    assert all("NonFiniteEmbeddingError" in e and "row" in e for e in caught.value.failed.values())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["overall"] is None and results["datasets"] == {}  # … and no score at all, let alone 100
    assert "ShapeCls" in results["failed"] and "non-finite embedding" in results["failed"]["ShapeCls"]
    assert "9 dataset(s) failed" in (tmp_path / "run" / "results.md").read_text()


@pytest.mark.parametrize("noise", [0.0, 1e-4])
def test_collapsed_embeddings_are_flagged_and_not_scored_high(fake_embedder, noise, tmp_path):
    constant = [0.3, -0.2, 0.5, 0.1, 0.0, 0.7, -0.4, 0.2]
    if noise:  # near-identical: bf16-size noise around one vector
        g = torch.Generator().manual_seed(0)
        table = {}
        for ds in _suite():
            for r in ds.rows:
                for it in (r.query, *r.candidates):
                    table[it.text] = (torch.tensor(constant) + noise * torch.randn(8, generator=g)).tolist()
        emb = fake_embedder(table=table)
    else:
        emb = fake_embedder(constant=constant)
    r = score(emb, _suite(), {"batch_size": 4}, "collapsed", tmp_path)
    for name in ("A", "B"):
        d = r["datasets"][name]
        assert d["collapsed"] == ["queries", "candidates"]
        assert d["precision@1"] <= 100 / 3 + 1e-9  # never the 100.0 of "first maximum = index 0"
        if not noise:
            assert d["precision@1"] == 0.0 and d["tie_decided"] == d["num_queries"]
    assert r["overall"] < 20
    table = (tmp_path / "results.md").read_text()
    assert table.count("COLLAPSED (queries and candidates embeddings identical)") == 2
    # Why the guard is needed: on exactly equal scores the reference's first-maximum rule hits every row.
    assert precision_at_1(torch.zeros(4, 3)).tolist() == [1.0] * 4


def test_a_healthy_model_is_not_flagged(fake_embedder):
    r = evaluate_embedder(fake_embedder(), _suite(), progress=False)
    assert all(d["collapsed"] == [] and d["tie_decided"] == 0 for d in r["datasets"].values())


def test_ties_and_duplicated_ground_truths_are_counted_and_flagged(fake_embedder):
    table = {"q": [1, 0, 0, 0, 0, 0, 0, 0], "gt": [1, 0.2, 0, 0, 0, 0, 0, 0], "other": [0, 1, 0, 0, 0, 0, 0, 0],
             "twin": [1, 0.2, 0, 0, 0, 0, 0, 0]}  # "twin" embeds exactly like "gt"
    rows = [
        EvalRow("D", 0, Item("q"), (Item("gt"), Item("other"), Item("gt"))),    # duplicated ground truth
        EvalRow("D", 1, Item("q"), (Item("gt"), Item("twin"), Item("other"))),  # a tie, not a duplicate
        EvalRow("D", 2, Item("q"), (Item("gt"), Item("other"))),                # clean
        EvalRow("D", 3, Item("q"), (Item("other"), Item("gt"))),                # clean miss
    ]
    r = evaluate_embedder(fake_embedder(table=table), [EvalDataset("D", "Retrieval", "IND", rows)], progress=False)
    d = r["datasets"]["D"]
    assert (d["duplicate_gt"], d["tied_rows"], d["tie_decided"]) == (1, 2, 2)
    assert d["precision@1"] == 75.0  # first-maximum rule: both tied rows are hits
    strict = evaluate_embedder(fake_embedder(table=table), [EvalDataset("D", "Retrieval", "IND", rows)],
                               tie_rule="strict", progress=False)
    assert strict["datasets"]["D"]["precision@1"] == 25.0
    md = render_table(r)
    assert "ties decide 2 rows (50.0 %)" in md and "ground truth duplicated among the candidates in 1 rows" in md
    assert "ties decide" not in render_table(r, tie_flag_share=0.6)  # below the chosen threshold: no flag
