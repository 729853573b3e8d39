"""Precision@1, the aggregation and the unique-item protocol on hand-worked examples."""

from __future__ import annotations

import pytest
import torch

from datamodules.schema import EvalRow, Item
from evaluation.engine import EvalDataset
from evaluation.mmeb import aggregate, chance_level, evaluate_embedder, render_table
from evaluation.scoring import precision_at_1


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


def test_an_item_shared_by_the_first_and_last_dataset_is_encoded_once_and_then_dropped(fake_embedder):
    from evaluation.engine import _Cache

    rows = {name: [EvalRow(name, 0, Item(f"q-{name}"), (Item(gt), Item(f"other-{name}")))]
            for name, gt in (("X", "shared"), ("Y", "own"), ("Z", "shared"))}
    suite = [EvalDataset(n, "Retrieval", "IND", r) for n, r in rows.items()]
    emb = fake_embedder()
    r = evaluate_embedder(emb, suite, progress=False)
    assert emb.encoded["target"].count("shared") == 1 and emb.calls["target"] == 5
    assert r["failed"] == {} and set(r["datasets"]) == {"X", "Y", "Z"}

    cache = _Cache()
    enc = cache.lookup([1, 4, 7], lambda missing: torch.tensor([[float(x)] for x in missing]))
    assert enc.squeeze(1).tolist() == [1.0, 4.0, 7.0]
    cache.keep([1, 4, 7], enc, alive=lambda x: x != 4)  # 4 is needed by no later dataset: dropped
    assert sorted(cache.pos) == [1, 7]
    again = cache.lookup([2, 7], lambda missing: torch.tensor([[float(x)] for x in missing]))
    assert again.squeeze(1).tolist() == [2.0, 7.0]  # 7 from the cache, 2 encoded
    cache.keep([2, 7], again, alive=lambda x: False)
    assert cache.pos == {} and cache.mat.numel() == 0


def test_candidates_formatted_as_queries_when_the_dataset_says_so(fake_embedder):
    """candidate_side="query" (Gen2Embed's RefCOCO-Matching): candidates get the query-side formatting."""
    rows = [EvalRow("M", i, Item(f"region {i}"), tuple(Item(f"crop {i}-{j}") for j in range(6))) for i in range(8)]
    for side in ("target", "query"):
        emb = fake_embedder(side_dependent=True)  # a different vector per side for the same text
        r = evaluate_embedder(emb, [EvalDataset("M", "Grounding", "OOD", rows, candidate_side=side)], progress=False)
        assert set(emb.encoded[side]) >= {c.text for row in rows for c in row.candidates}
        assert not ({c.text for row in rows for c in row.candidates} & set(emb.encoded[{"query": "target",
                                                                                         "target": "query"}[side]]))
        hits = 0
        for row in rows:  # naive: the query vector against the candidates' vectors of the chosen side
            q = emb(emb.input_builder([row.query.text], [None], "query"))[0]
            s = torch.stack([emb(emb.input_builder([c.text], [None], side))[0] @ q for c in row.candidates])
            hits += int(torch.argmax(s)) == 0
        assert r["datasets"]["M"]["precision@1"] == pytest.approx(100 * hits / len(rows))
    with pytest.raises(ValueError, match="candidate_side must be 'query' or 'target'"):
        EvalDataset("M", "Grounding", "OOD", rows, candidate_side="candidate")
