"""Rows with several correct candidates (`EvalRow.relevant`, MMEB-V2's MomentSeeker and SSv2's repeated labels):
hit@1 as the reference scores it (VLM2Vec `eval.py:324-343`: candidates ranked by `np.argsort(-scores)`, label_name
a list, `RankingMetrics.hit_at_k(prediction, labels, 1)` = the first prediction is among the labels), checked by
hand and against that computation written out; rows with one correct candidate score exactly as before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.schema import EvalRow, Item
from evaluation.mmeb import EvalDataset, evaluate_embedder
from evaluation.scoring import row_outcomes
from evaluation.store import dataset_fingerprint


def _mask(rows, k):
    m = torch.zeros(len(rows), k, dtype=torch.bool)
    for i, rel in enumerate(rows):
        m[i, list(rel)] = True
    return m


def test_hand_worked_hits_under_both_tie_rules():
    scores = torch.tensor([[0.1, 0.9, 0.8, 0.2],    # top = 1, correct {0, 1}: hit
                           [0.5, 0.3, 0.7, 0.9],    # top = 3, correct {0, 1}: miss
                           [0.9, 0.9, 0.1, -9.0],   # tie 0/1, both correct: hit under both rules
                           [0.9, 0.9, 0.1, -9.0]])  # tie 0/1, only 1 correct: first maximum 0 -> miss; strict miss
    rel = _mask([(0, 1), (0, 1), (0, 1), (1,)], 4)
    first = row_outcomes(scores, tie_rule="first", relevant=rel)
    strict = row_outcomes(scores, tie_rule="strict", relevant=rel)
    assert first.hit.tolist() == [True, False, True, False]
    assert strict.hit.tolist() == [True, False, True, False]
    assert first.score_gt.tolist() == pytest.approx([0.9, 0.5, 0.9, 0.9])
    assert first.tie_decided.tolist() == [False, False, True, True]
    # collapsed model: a tie at the top that includes a wrong candidate is a miss, one among correct ones is not
    assert row_outcomes(scores, relevant=rel, ties_are_misses=True).hit.tolist() == [True, False, True, False]
    ids = torch.tensor([[0, 1, 2, 0], [0, 1, 2, 3], [5, 5, 6, 7], [1, 2, 2, 3]])
    # row 0: correct item 0 again as wrong candidate 3; row 2: the repeat is among correct ones; row 3: 2 = correct 1
    assert row_outcomes(scores, ids, relevant=rel).duplicate_gt.tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="a correct candidate in every row"):
        row_outcomes(scores, relevant=torch.zeros(4, 4, dtype=torch.bool))


def test_index_0_mask_equals_the_default():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 7, generator=g).round(decimals=1)  # rounding makes ties
    scores[::5, 5:] = float("-inf")  # padding
    ids = torch.randint(0, 6, (50, 7), generator=g)
    for rule in ("first", "strict"):
        for collapsed in (False, True):
            a = row_outcomes(scores, ids, rule, ties_are_misses=collapsed)
            b = row_outcomes(scores, ids, rule, ties_are_misses=collapsed, relevant=_mask([(0,)] * 50, 7))
            for name in ("hit", "pred", "score_gt", "tied", "tie_decided", "duplicate_gt"):
                assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_matches_the_reference_hit_at_1_on_random_rows():
    rng = np.random.default_rng(1)
    scores = torch.tensor(rng.standard_normal((200, 10)), dtype=torch.float32)  # no ties
    rels = [tuple(sorted(rng.choice(10, size=rng.integers(1, 4), replace=False).tolist())) for _ in range(200)]
    ours = row_outcomes(scores, relevant=_mask(rels, 10)).hit
    for i, rel in enumerate(rels):  # eval.py: prediction = names in np.argsort(-scores) order; hit_at_k(k=1)
        names = [f"clip{j}" for j in range(10)]
        prediction = [names[j] for j in np.argsort(-scores[i].numpy())]
        labels = [names[j] for j in rel]
        assert bool(ours[i]) == (len(set(prediction[:1]) & set(labels)) > 0)


def test_momentseeker_like_dataset_end_to_end(fake_embedder):
    """Two positive clips: the query's nearest clip is the second positive -> a hit (index 0 alone would miss)."""
    q, p1, p2, n1 = [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.9, 0.1, 0, 0], [0.5, 0, 1.0, 0]
    table = {"find": q, "pos a": p1, "pos b": p2, "neg": n1, "find2": [0, 0, 1.0, 0]}
    rows = [EvalRow("MS", 0, Item("find"), (Item("pos a"), Item("pos b"), Item("neg")), (0, 1)),
            EvalRow("MS", 1, Item("find2"), (Item("pos a"), Item("pos b"), Item("neg")), (0, 1))]
    emb = fake_embedder(table)
    entry = evaluate_embedder(emb, [EvalDataset("MS", "MomentRetrieval", "-", rows, modality="video")],
                              progress=False)["datasets"]["MS"]
    assert entry["precision@1"] == pytest.approx(50.0) and entry["metrics"]["hit@1"] == pytest.approx(0.5)
    single = [EvalRow("MS", r.row, r.query, r.candidates) for r in rows]
    entry = evaluate_embedder(fake_embedder(table), [EvalDataset("MS", "MomentRetrieval", "-", single,
                                                                 modality="video")], progress=False)["datasets"]["MS"]
    assert entry["precision@1"] == 0.0


def test_relevant_is_validated_and_fingerprinted():
    cands = (Item("a"), Item("b"))
    assert EvalRow("D", 0, Item("q"), cands, (1, 0)).relevant == (0, 1)
    for bad in ((), (2,), (0, 0), (-1,)):
        with pytest.raises(ValueError, match="relevant must be distinct candidate indices"):
            EvalRow("D", 0, Item("q"), cands, bad)
    one = EvalDataset("D", "MomentRetrieval", "-", [EvalRow("D", 0, Item("q"), cands)], modality="video")
    two = EvalDataset("D", "MomentRetrieval", "-", [EvalRow("D", 0, Item("q"), cands, (0, 1))], modality="video")
    assert dataset_fingerprint(one) != dataset_fingerprint(two)
    step = EvalDataset("D", "MomentRetrieval", "-", [EvalRow("D", 0, Item("q"), cands)], modality="video",
                       frame_saving="step")
    assert dataset_fingerprint(step) != dataset_fingerprint(one)
