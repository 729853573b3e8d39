"""Mined-negative selection rules (METHODS §2.4): positive-aware filters and the top / random / SimANS
selectors, against hand-worked values, naive loops and sampling frequencies."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from mining.selection import (
    positive_aware_mask,
    select_negatives,
    simans_log_weights,
    simans_probabilities,
)

# One query; s_pos = 0.8. Scores chosen away from every threshold so float rounding cannot decide.
SCORES = np.array([[0.95, 0.78, 0.74, 0.5, -0.2]])
S_POS = np.array([0.8])


def test_filters_hand_worked():
    # relative 0.95 → keep ≤ 0.76; margin 0.1 → keep ≤ 0.7; range [0, 0.9] → drop 0.95 and -0.2.
    assert positive_aware_mask(SCORES, S_POS).tolist() == [[True] * 5]
    assert positive_aware_mask(SCORES, S_POS, relative=0.95).tolist() == [[False, False, True, True, True]]
    assert positive_aware_mask(SCORES, S_POS, margin=0.1).tolist() == [[False, False, False, True, True]]
    assert positive_aware_mask(SCORES, S_POS, min_score=0.0, max_score=0.9).tolist() == [[False, True, True, True, False]]
    both = positive_aware_mask(SCORES, S_POS, relative=0.95, min_score=0.0, valid=[[1, 1, 1, 0, 1]])
    assert both.tolist() == [[False, False, True, False, False]]


def naive_mask(scores, s_pos, valid, relative, margin, lo, hi):
    out = np.zeros(scores.shape, dtype=bool)
    for q in range(scores.shape[0]):
        for p in range(scores.shape[1]):
            s = scores[q, p]
            ok = valid[q, p]
            # sentence-transformers' rules (relative_margin = 1 − relative), for either sign of s_pos.
            ok = ok and (relative is None or s <= s_pos[q] - abs(s_pos[q]) * (1 - relative))
            ok = ok and (margin is None or s + margin <= s_pos[q])
            ok = ok and (lo is None or s >= lo) and (hi is None or s <= hi)
            out[q, p] = ok
    return out


@pytest.mark.parametrize("relative, margin, lo, hi", [(0.95, None, None, None), (None, 0.05, None, None),
                                                      (0.9, 0.02, -0.1, 0.6), (None, None, 0.2, None)])
def test_filters_match_a_naive_loop(relative, margin, lo, hi):
    rng = np.random.default_rng(1)
    scores = rng.uniform(-1, 1, size=(20, 30))
    s_pos = rng.uniform(-0.5, 1, size=20)
    valid = rng.random((20, 30)) > 0.2
    got = positive_aware_mask(scores, s_pos, valid=valid, relative=relative, margin=margin, min_score=lo, max_score=hi)
    assert (got == naive_mask(scores, s_pos, valid, relative, margin, lo, hi)).all()


def test_top_selection_hand_worked_and_padding():
    keep = positive_aware_mask(SCORES, S_POS, relative=0.95)  # 0.74, 0.5, -0.2 survive
    assert select_negatives(SCORES, S_POS, keep, 2, "top").tolist() == [[2, 3]]
    assert select_negatives(SCORES, S_POS, keep, 4, "top").tolist() == [[2, 3, 4, -1]]
    assert select_negatives(SCORES, S_POS, keep, 7, "top").tolist() == [[2, 3, 4, -1, -1, -1, -1]]
    nothing = np.zeros_like(keep)
    assert select_negatives(SCORES, S_POS, nothing, 1, "simans", np.random.default_rng(0)).tolist() == [[-1]]


def test_simans_probabilities_hand_worked():
    # a = 0.5, b = 0, s_pos = 0.5: weights exp(-0.5·0²) = 1, exp(-0.5·0.2²) = exp(-0.02), exp(-0.5·1²) = exp(-0.5).
    scores, s_pos = np.array([[0.5, 0.3, -0.5, 0.9]]), np.array([0.5])
    keep = np.array([[True, True, True, False]])
    w = np.array([1.0, math.exp(-0.02), math.exp(-0.5)])
    probs = simans_probabilities(scores, s_pos, keep)
    np.testing.assert_allclose(probs[0, :3], w / w.sum(), rtol=1e-12)
    assert probs[0, 3] == 0.0
    # b shifts the mode: with b = -0.2 the candidate at s_pos - 0.2 = 0.3 is the likeliest.
    assert np.argmax(simans_probabilities(scores, s_pos, keep, a=0.5, b=-0.2)[0]) == 1


def test_simans_probabilities_match_a_naive_loop_and_survive_large_a():
    rng = np.random.default_rng(2)
    scores, s_pos = rng.uniform(-1, 1, size=(6, 9)), rng.uniform(0, 1, size=6)
    keep = rng.random((6, 9)) > 0.3
    for a, b in ((0.5, 0.0), (3.0, 0.1), (5000.0, -0.05)):
        got = simans_probabilities(scores, s_pos, keep, a, b)
        for q in range(6):
            logs = [-a * (scores[q, p] - s_pos[q] - b) ** 2 if keep[q, p] else None for p in range(9)]
            top = max(x for x in logs if x is not None)
            w = [math.exp(x - top) if x is not None else 0.0 for x in logs]
            np.testing.assert_allclose(got[q], np.array(w) / sum(w), rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(simans_log_weights(scores, s_pos, 2.0, 0.1),
                               -2.0 * (scores - s_pos[:, None] - 0.1) ** 2)


def sample_many(method, scores, s_pos, keep, num, draws, seed=0, **kw):
    """`draws` independent selections for one query, in one vectorised call (the query tiled)."""
    tiled = np.repeat(scores, draws, axis=0)
    return select_negatives(tiled, np.repeat(s_pos, draws), np.repeat(keep, draws, axis=0), num, method,
                            np.random.default_rng(seed), **kw)


def test_simans_first_draw_frequencies_match_the_probabilities():
    scores, s_pos = np.array([[0.6, 0.45, 0.2, -0.3, 0.1]]), np.array([0.5])
    keep = np.array([[True, True, True, True, False]])
    a = 4.0  # sharper than the default so the probabilities differ clearly
    probs = simans_probabilities(scores, s_pos, keep, a=a)[0]
    draws = 40000
    chosen = sample_many("simans", scores, s_pos, keep, 1, draws, seed=3, a=a)[:, 0]
    freq = np.bincount(chosen, minlength=5) / draws
    assert freq[4] == 0.0
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(probs.max() / draws))


def test_simans_second_draw_is_without_replacement():
    # Two draws: P(i then j) = p_i · p_j / (1 − p_i), the sequential weighted draw without replacement.
    scores, s_pos = np.array([[0.6, 0.45, 0.2]]), np.array([0.5])
    keep = np.ones((1, 3), dtype=bool)
    p = simans_probabilities(scores, s_pos, keep, a=4.0)[0]
    draws = 40000
    chosen = sample_many("simans", scores, s_pos, keep, 2, draws, seed=4, a=4.0)
    assert (chosen[:, 0] != chosen[:, 1]).all()
    counts = Counter(map(tuple, chosen.tolist()))
    for i in range(3):
        for j in range(3):
            if i != j:
                expected = p[i] * p[j] / (1 - p[i])
                assert abs(counts[(i, j)] / draws - expected) < 4 * np.sqrt(expected / draws)


def test_random_selection_is_uniform_over_the_kept_candidates():
    keep = positive_aware_mask(SCORES, S_POS, relative=0.95)
    chosen = sample_many("random", SCORES, S_POS, keep, 1, 30000)[:, 0]
    freq = np.bincount(chosen, minlength=5) / 30000
    assert freq[:2].sum() == 0.0
    np.testing.assert_allclose(freq[2:], 1 / 3, atol=4 * np.sqrt((1 / 3) / 30000))


@pytest.mark.parametrize("method", ["top", "random", "simans"])
def test_no_selector_picks_a_filtered_candidate(method):
    rng = np.random.default_rng(5)
    scores, s_pos = rng.uniform(-1, 1, size=(50, 20)), rng.uniform(0, 1, size=50)
    keep = positive_aware_mask(scores, s_pos, valid=rng.random((50, 20)) > 0.1, relative=0.95, margin=0.05)
    chosen = select_negatives(scores, s_pos, keep, 3, method, rng)
    for q in range(50):
        picked = [c for c in chosen[q] if c >= 0]
        assert len(picked) == min(3, keep[q].sum()) == len(set(picked))
        assert all(keep[q, c] and scores[q, c] < 0.95 * s_pos[q] for c in picked)
        if method == "top":
            assert sorted(scores[q, keep[q]], reverse=True)[: len(picked)] == [scores[q, c] for c in picked]


def test_bad_arguments_are_named():
    keep = np.ones_like(SCORES, dtype=bool)
    with pytest.raises(ValueError, match="unknown negative selector 'best'"):
        select_negatives(SCORES, S_POS, keep, 1, "best")
    with pytest.raises(ValueError, match="mining.num_negatives"):
        select_negatives(SCORES, S_POS, keep, 0, "top")
    with pytest.raises(ValueError, match="pass rng"):
        select_negatives(SCORES, S_POS, keep, 1, "random")
    with pytest.raises(ValueError, match=r"positive_scores must be \[queries\]"):
        positive_aware_mask(SCORES, np.array([0.1, 0.2]))
