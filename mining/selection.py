"""Choosing mined hard negatives from retrieval scores (METHODS §2.4): positive-aware filters and selectors.

Pure functions of score arrays, no model: the miner (`mining/negatives.py`) retrieves for each query the
top candidates of its subset and hands their scores here. Shapes: `scores` is [Q, P] (query q's score
with its p-th retrieved candidate), `positive_scores` is [Q] (s_pos, the query's score with its own
positive), `valid` / `keep` are [Q, P] booleans (False marks padding, the query's own positive and
anything identical to it).

Filters (NV-Retriever, "positive-aware" mining), all optional and combined with AND, each keeping a
candidate only when
- relative (TopK-PercPos):   score ≤ s_pos − |s_pos| · (1 − p)   (p = 0.95 in the paper)
- margin (TopK-MarginPos):   score + m ≤ s_pos                   (m = 0.05 typical)
- absolute range:            min_score ≤ score ≤ max_score
A candidate scoring almost as high as the positive is more likely an unlabeled positive (a false
negative) than a hard negative; the filters cut relative to each query's own positive score.
The relative cut equals NV-Retriever's `score < p · s_pos` for a positive s_pos but stays below the
positive for any sign: `p · s_pos` lies *above* a negative s_pos (0.95 · −0.2 = −0.19 > −0.2), so that
form kept candidates scoring higher than the positive itself. At s_pos = 0 the cut is at 0. Scores
equal to a threshold are kept. These are the semantics of sentence-transformers' `mine_hard_negatives`
(6.2, `sentence_transformers/util/hard_negatives.py`): its `relative_margin` (= 1 − p) removes
`score > s_pos − |s_pos| · relative_margin`, its `absolute_margin` (= m) removes `score + m > s_pos`.

Selectors pick `num` of the kept candidates per query:
- "top": the highest-scoring ones (ties: retrieval order).
- "random": uniformly at random, without replacement.
- "simans" (SimANS, ambiguous negatives): without replacement, each draw picking candidate i with
  probability ∝ exp(−a · (s_i − s_pos − b)²) among those not yet drawn (a = 0.5, b = 0 by default):
  negatives scoring close to the positive are likeliest, very easy and suspiciously hard ones rare.
Sampling without replacement uses the Gumbel-top-k trick: the `num` largest of log w_i + G_i,
G_i ~ Gumbel(0, 1), are distributed exactly as `num` successive weighted draws without replacement.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SELECTORS", "positive_aware_mask", "select_negatives", "simans_log_weights", "simans_probabilities"]

SELECTORS = ("top", "random", "simans")


def _as_scores(scores, positive_scores) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positive_scores = np.asarray(positive_scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [queries, candidates], got shape {scores.shape}")
    if positive_scores.shape != (scores.shape[0],):
        raise ValueError(f"positive_scores must be [queries] = [{scores.shape[0]}], got shape {positive_scores.shape}")
    return scores, positive_scores


def positive_aware_mask(scores, positive_scores, *, valid=None, relative: float | None = None,
                        margin: float | None = None, min_score: float | None = None,
                        max_score: float | None = None) -> np.ndarray:
    """[Q, P] bool: candidates that are `valid` and pass every filter that is not None (module docstring)."""
    scores, positive_scores = _as_scores(scores, positive_scores)
    keep = np.ones(scores.shape, dtype=bool) if valid is None else np.array(valid, dtype=bool)
    if keep.shape != scores.shape:
        raise ValueError(f"valid must have the shape of scores {scores.shape}, got {keep.shape}")
    keep &= np.isfinite(scores)
    s_pos = positive_scores[:, None]
    if relative is not None:
        keep &= ~(scores > s_pos - np.abs(s_pos) * (1.0 - float(relative)))
    if margin is not None:
        keep &= ~(scores + float(margin) > s_pos)
    if min_score is not None:
        keep &= scores >= float(min_score)
    if max_score is not None:
        keep &= scores <= float(max_score)
    return keep


def simans_log_weights(scores, positive_scores, a: float = 0.5, b: float = 0.0) -> np.ndarray:
    """[Q, P] log of the SimANS sampling weight, −a · (s_i − s_pos − b)² (unnormalised)."""
    scores, positive_scores = _as_scores(scores, positive_scores)
    return -float(a) * (scores - positive_scores[:, None] - float(b)) ** 2


def simans_probabilities(scores, positive_scores, keep, a: float = 0.5, b: float = 0.0) -> np.ndarray:
    """[Q, P] probability of each kept candidate being SimANS's first draw; 0 elsewhere; rows with
    nothing kept are all 0."""
    log_w = np.where(keep, simans_log_weights(scores, positive_scores, a, b), -np.inf)
    top = np.max(log_w, axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)  # rows with nothing kept stay all 0 below
    w = np.exp(log_w - top)  # shifted by the row maximum: no underflow to an all-zero row
    total = w.sum(axis=1, keepdims=True)
    return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def select_negatives(scores, positive_scores, keep, num: int, method: str = "top",
                     rng: np.random.Generator | None = None, a: float = 0.5, b: float = 0.0) -> np.ndarray:
    """[Q, num] column indices (into the P candidates) of the chosen negatives, -1 where fewer than
    `num` candidates are kept. Chosen columns come in selection order (best first for "top")."""
    scores, positive_scores = _as_scores(scores, positive_scores)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != scores.shape:
        raise ValueError(f"keep must have the shape of scores {scores.shape}, got {keep.shape}")
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 1:
        raise ValueError(f"num (mining.num_negatives) must be a positive integer, got {num!r}")
    if method not in SELECTORS:
        raise ValueError(f"unknown negative selector {method!r}; choose one of {SELECTORS}")
    if method == "top":
        key = scores
    else:
        if rng is None:
            raise ValueError(f"the {method!r} selector samples: pass rng (a numpy Generator)")
        log_w = np.zeros(scores.shape) if method == "random" else simans_log_weights(scores, positive_scores, a, b)
        key = log_w + rng.gumbel(size=scores.shape)
    key = np.where(keep, key, -np.inf)
    num_cols = min(int(num), scores.shape[1])
    # Stable sort of the negated key: equal keys keep retrieval order.
    order = np.argsort(-key, axis=1, kind="stable")[:, :num_cols]
    chosen = np.where(np.take_along_axis(keep, order, axis=1), order, -1)
    if num_cols < num:
        chosen = np.concatenate([chosen, np.full((scores.shape[0], num - num_cols), -1, dtype=chosen.dtype)], axis=1)
    return chosen
