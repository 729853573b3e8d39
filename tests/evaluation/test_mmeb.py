"""Precision@1, the aggregation and the unique-item protocol on hand-worked examples."""

from __future__ import annotations

import pytest
import torch

from datamodules.schema import EvalRow, Item
from evaluation.mmeb import (
    EvalDataset,
    aggregate,
    chance_level,
    evaluate_embedder,
    precision_at_1,
    render_table,
)


def test_precision_at_1_ties():
    scores = [torch.tensor([0.9, 0.1, 0.3]), torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.4, 0.1])]
    assert precision_at_1(scores).tolist() == [1.0, 0.0, 1.0]  # reference argmax: first maximum wins
    assert precision_at_1(scores, "strict").tolist() == [1.0, 0.0, 0.0]


def test_aggregate_hand_worked():
    per = {
        "A": {"precision@1": 50.0, "num_queries": 10, "meta_task": "Classification", "split": "IND"},
        "B": {"precision@1": 70.0, "num_queries": 10, "meta_task": "Classification", "split": "OOD"},
        "C": {"precision@1": 30.0, "num_queries": 5, "meta_task": "VQA", "split": "IND"},
        "D": {"precision@1": 90.0, "num_queries": 5, "meta_task": "Grounding", "split": "IND"},
    }
    r = aggregate(per)
    assert r["meta_tasks"] == {"Classification": 60.0, "VQA": 30.0, "Grounding": 90.0}
    assert r["IND"] == pytest.approx(170 / 3) and r["OOD"] == 70.0
    # Overall = mean over datasets (60.0), not over meta-task means (60.0 here by chance? no: (60+30+90)/3 = 60)
    per["E"] = {"precision@1": 10.0, "num_queries": 5, "meta_task": "VQA", "split": "OOD"}
    r = aggregate(per)
    assert r["overall"] == pytest.approx(50.0)  # (50+70+30+90+10)/5
    assert sum(r["meta_tasks"].values()) / 3 == pytest.approx((60 + 20 + 90) / 3)  # differs from Overall
    assert set(r) == {"overall", "IND", "OOD", "meta_tasks", "datasets"}
    assert r["datasets"]["A"] == per["A"]
    assert aggregate({"A": per["A"]})["OOD"] is None
    table = render_table(r)
    assert "| model | 60.0 | 20.0 | – | 90.0 |" in table


class CountingEmbedder(torch.nn.Module):
    """Embeds a text by a lookup table; counts how many items each side encodes."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.calls = {"query": 0, "target": 0}
        self.family = type("F", (), {"takes_images": True})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        outer = self

        class Builder:
            def __call__(self, texts, images, side):
                outer.calls[side] += len(texts)
                return {"v": torch.stack([torch.tensor(outer.table[t], dtype=torch.float32) for t in texts])}

        self.input_builder = Builder()

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, inputs):
        return torch.nn.functional.normalize(inputs["v"], dim=-1)


def test_protocol_encodes_unique_items_once_and_scores_index_0():
    table = {"q1": [1, 0], "q2": [0, 1], "dog": [1, 0.1], "cat": [0.1, 1], "bird": [-1, 0]}
    rows = [
        EvalRow("X", 0, Item("q1"), (Item("dog"), Item("cat"), Item("bird"))),   # hit
        EvalRow("X", 1, Item("q2"), (Item("dog"), Item("cat"), Item("bird"))),   # miss (cat wins)
        EvalRow("X", 2, Item("q1"), (Item("dog"), Item("cat"), Item("bird"))),   # duplicate query
    ]
    rows_y = [EvalRow("Y", 0, Item("q2"), (Item("cat"), Item("dog")))]           # hit
    emb = CountingEmbedder(table)
    suite = [EvalDataset("X", "Classification", "IND", rows), EvalDataset("Y", "Retrieval", "OOD", rows_y)]
    r = evaluate_embedder(emb, suite, batch_size=2, progress=False)
    assert emb.calls == {"query": 2, "target": 3}  # unique queries q1, q2; candidates dog, cat, bird
    assert r["datasets"]["X"]["precision@1"] == pytest.approx(200 / 3)
    assert r["datasets"]["Y"]["precision@1"] == 100.0
    assert r["overall"] == pytest.approx((200 / 3 + 100) / 2)
    assert chance_level(suite) == pytest.approx(100 * (1 / 3 + 1 / 2) / 2)
