"""Vectorised scoring against a naive per-row loop, hand-worked tie/duplicate cases, and fp32 under autocast."""

from __future__ import annotations

import pytest
import torch

import evaluation.scoring as scoring
from evaluation.scoring import pad_candidates, precision_at_1, row_outcomes, score_rows


def _random_problem(seed=0, n=40, nq=25, nc=60, d=16, kmin=1, kmax=9):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(nq, d, generator=g), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(nc, d, generator=g), dim=-1)
    q_ids = torch.randint(0, nq, (n,), generator=g)
    cands = [torch.randint(0, nc, (int(torch.randint(kmin, kmax + 1, (1,), generator=g)),), generator=g).tolist()
             for _ in range(n)]
    return q, c, q_ids, cands


def test_score_rows_equals_a_naive_loop_in_float64():
    q, c, q_ids, cands = _random_problem()
    scores = score_rows(q, c, q_ids, pad_candidates(cands))
    assert scores.dtype == torch.float32 and scores.shape == (40, max(map(len, cands)))
    for i, row in enumerate(cands):
        naive = torch.stack([(q[q_ids[i]].double() * c[j].double()).sum() for j in row])
        assert torch.allclose(scores[i, : len(row)].double(), naive, atol=1e-6)
        assert torch.isneginf(scores[i, len(row):]).all()


def test_blocked_scoring_equals_one_block(monkeypatch):
    q, c, q_ids, cands = _random_problem(seed=1, n=50)
    ids = pad_candidates(cands)
    whole = score_rows(q, c, q_ids, ids)
    monkeypatch.setattr(scoring, "_BLOCK", 64)  # forces blocks of a few rows
    assert torch.allclose(score_rows(q, c, q_ids, ids), whole, atol=1e-6)
    assert torch.equal(torch.isneginf(score_rows(q, c, q_ids, ids)), torch.isneginf(whole))


def test_hits_and_predictions_equal_the_reference_argmax_loop():
    q, c, q_ids, cands = _random_problem(seed=2, n=60)
    ids = pad_candidates(cands)
    out = row_outcomes(score_rows(q, c, q_ids, ids), ids)
    for i, row in enumerate(cands):  # the reference evaluators: np.argmax over the row's candidate scores
        s = torch.stack([q[q_ids[i]] @ c[j] for j in row])
        assert int(out.pred[i]) == int(torch.argmax(s))
        assert bool(out.hit[i]) == (int(torch.argmax(s)) == 0)
        assert float(out.score_gt[i]) == pytest.approx(float(s[0]), abs=1e-6)
        assert float(out.score_pred[i]) == pytest.approx(float(s.max()), abs=1e-6)


def test_ties_duplicates_and_rules_hand_worked():
    inf = float("-inf")
    scores = torch.tensor([
        [0.9, 0.1, 0.3, inf],    # clean hit
        [0.2, 0.5, inf, inf],    # clean miss
        [0.4, 0.4, 0.1, inf],    # tie at the top, ground truth in it: the rule decides
        [0.1, 0.7, 0.7, 0.2],    # tie at the top without the ground truth: a miss either way
        [0.5, 0.5 - 5e-6, 0.0, inf],  # within the tolerance (1e-5): a tie for the diagnostics
        [0.8, inf, inf, inf],    # one candidate
    ])
    ids = torch.tensor([[0, 1, 2, -1], [3, 4, -1, -1], [5, 5, 6, -1], [7, 8, 9, 10], [11, 12, 13, -1],
                        [14, -1, -1, -1]])
    first = row_outcomes(scores, ids, "first")
    strict = row_outcomes(scores, ids, "strict")
    assert first.hit.tolist() == [True, False, True, False, True, True]
    assert strict.hit.tolist() == [True, False, False, False, True, True]  # row 4 differs by 5e-6: not an exact tie
    assert first.pred.tolist() == [0, 1, 0, 1, 0, 0]
    assert first.tied.tolist() == [False, False, True, True, True, False]
    assert first.tie_decided.tolist() == [False, False, True, False, True, False]
    assert first.duplicate_gt.tolist() == [False, False, True, False, False, False]
    collapsed = row_outcomes(scores, ids, "first", ties_are_misses=True)
    assert collapsed.hit.tolist() == [True, False, False, False, False, True]
    assert precision_at_1([torch.tensor([0.4, 0.4, 0.1])]).tolist() == [1.0]
    assert precision_at_1(scores, "strict").tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="tie_rule"):
        row_outcomes(scores, ids, "random")
    with pytest.raises(ValueError, match="NaN"):
        row_outcomes(torch.tensor([[float("nan"), 0.1]]))


def test_scores_are_fp32_under_bf16_autocast():
    """ENVIRONMENT.md 2026-12-01: inside autocast, `q.float() @ c.float().T` runs in bf16. Scoring must not."""
    q, c, q_ids, cands = _random_problem(seed=3, d=64)
    ids = pad_candidates(cands)
    reference = score_rows(q, c, q_ids, ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (q.float() @ c.float().T).dtype == torch.bfloat16  # the hazard this guards against is real here
        under = score_rows(q, c, q_ids, ids)
        outcomes_under = row_outcomes(under, ids)
    assert under.dtype == torch.float32
    assert torch.equal(under, reference)
    assert torch.equal(outcomes_under.hit, row_outcomes(reference, ids).hit)
