"""Vectorised MMEB row scoring: cosine (dot) scores of every row's candidates in fp32, Precision@1 with the
ground truth at index 0, and the per-row facts the diagnostics need (ties at the top, duplicated ground
truths). Rows are padded to the largest candidate count (index -1, score -inf); no Python loop over rows.

Ties. The reference evaluators take `argmax`, whose first maximum wins: a row whose ground truth (index 0)
shares the top score is a hit (`tie_rule="first"`); `"strict"` counts it as a miss. Two scores count as
tied for the diagnostics when they differ by at most `tie_tolerance` × max(1, |top score|): 1e-5 by
default, about ten times the fp32 rounding of a dot product of unit vectors of width ≤ 4096 (≈ √d·2⁻²⁴)
and far below the cosine gaps a trained model ranks by (10⁻³ and up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

TIE_RULES = ("first", "strict")
DEFAULT_TIE_TOLERANCE = 1e-5
#: Elements of the largest intermediate score/gather block (fp32): 2^25 = 128 MiB.
_BLOCK = 1 << 25


def pad_candidates(candidate_ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """[N, K_max] int64 candidate indices, -1 where a row has fewer than K_max candidates."""
    k = max((len(c) for c in candidate_ids), default=0)
    out = torch.full((len(candidate_ids), k), -1, dtype=torch.long)
    for i, c in enumerate(candidate_ids):  # building the index matrix, not scoring
        out[i, : len(c)] = torch.as_tensor(c, dtype=torch.long)
    return out


def score_rows(query_emb: torch.Tensor, candidate_emb: torch.Tensor, query_ids: torch.Tensor,
               candidate_ids: torch.Tensor) -> torch.Tensor:
    """scores[i, j] = query_emb[query_ids[i]] · candidate_emb[candidate_ids[i, j]] in fp32 (-inf where
    candidate_ids is -1), whatever autocast context the caller runs in. Rows are processed in blocks whose
    distinct candidates are scored once by one matmul and then gathered."""
    n, k = candidate_ids.shape
    out = torch.full((n, k), float("-inf"), dtype=torch.float32)
    if n == 0 or k == 0:
        return out
    q = query_emb.float()
    c = candidate_emb.float()
    d = max(int(q.shape[-1]), 1)
    # A block of r rows scores at most r·k distinct candidates: bound both the gathered [u, d] candidates
    # and the [r, u] score block. Rows sharing a label set (classification) collapse to u = k.
    rows = max(1, min(n, _BLOCK // (k * d), int((_BLOCK / k) ** 0.5)))
    distinct = torch.unique(candidate_ids[candidate_ids >= 0])
    if distinct.numel() * max(d, n) <= _BLOCK:
        rows = n
    with torch.autocast(q.device.type, enabled=False):  # bf16 autocast would run this matmul in bf16
        for s in range(0, n, rows):
            ids = candidate_ids[s : s + rows]
            valid = ids >= 0
            uniq, inverse = torch.unique(ids.clamp(min=0), return_inverse=True)
            block = q[query_ids[s : s + rows]] @ c[uniq].T  # [r, u]
            out[s : s + rows] = block.gather(1, inverse).masked_fill(~valid, float("-inf"))
    return out


@dataclass
class RowOutcomes:
    """Per-row results of one dataset (tensors of length N)."""

    hit: torch.Tensor  # bool, under the chosen tie rule
    pred: torch.Tensor  # int64, first index of the maximum score (the reference's argmax)
    score_gt: torch.Tensor  # float32, score of the ground truth (index 0; the best correct one when several)
    score_pred: torch.Tensor  # float32, score of the prediction
    tied: torch.Tensor  # bool, ≥ 2 candidates within the tie tolerance of the top score
    tie_decided: torch.Tensor  # bool, tied and the ground truth is among the tied: the tie rule decides the row
    duplicate_gt: torch.Tensor  # bool, the ground truth item appears again among the candidates


def row_outcomes(scores: torch.Tensor, candidate_ids: torch.Tensor | None = None, tie_rule: str = "first",
                 tie_tolerance: float = DEFAULT_TIE_TOLERANCE, ties_are_misses: bool = False,
                 relevant: torch.Tensor | None = None) -> RowOutcomes:
    """Decide every row of a padded [N, K] score matrix (-inf = no candidate). `candidate_ids` (same shape)
    identifies duplicated ground truths; `ties_are_misses` scores rows whose top is tied (within the
    tolerance) as misses whatever `tie_rule` says (used for collapsed models). `relevant` ([N, K] bool) marks the
    correct candidates of rows with several (`EvalRow.relevant`); None = index 0 only. A row is a hit when its
    first maximum is correct (`first`), or when its best correct candidate beats every other one (`strict`)."""
    if tie_rule not in TIE_RULES:
        raise ValueError(f"tie_rule must be 'first' or 'strict', got {tie_rule!r}")
    scores = scores.float()
    n = scores.shape[0]
    if relevant is None:
        relevant = torch.zeros(scores.shape, dtype=torch.bool)
        relevant[:, :1] = True
    relevant = relevant.bool()
    if relevant.shape != scores.shape or (n and not relevant.any(dim=1).all()):
        raise ValueError(f"relevant must be a [N, K] mask with a correct candidate in every row, got shape "
                         f"{tuple(relevant.shape)} for scores {tuple(scores.shape)}")
    ninf = torch.tensor(float("-inf"))
    if torch.isnan(scores).any() or (n and not torch.isfinite(scores.where(relevant, 0.0)).all()):
        raise ValueError("scores contain NaN or a ground truth without a finite score; non-finite embeddings "
                         "must be refused before scoring")
    pred = scores.argmax(dim=1)  # the first maximal index, as the reference's argmax
    top = scores.gather(1, pred.unsqueeze(1)).squeeze(1)
    gt = scores.where(relevant, ninf).max(dim=1).values
    others = scores.where(~relevant, ninf).max(dim=1).values if scores.shape[1] > 1 else torch.full_like(gt, -torch.inf)
    hit = relevant.gather(1, pred.unsqueeze(1)).squeeze(1) if tie_rule == "first" else gt > others
    tol = tie_tolerance * top.abs().clamp(min=1.0)
    near = scores >= (top - tol).unsqueeze(1)  # -inf padding is never near a finite top
    tied = near.sum(dim=1) >= 2
    near_gt = (near & relevant).any(dim=1)
    tie_decided = tied & near_gt
    if ties_are_misses:
        hit = near_gt & ~(near & ~relevant).any(dim=1)
    if candidate_ids is not None and candidate_ids.shape[1] > 1:
        # a correct candidate's item appears again among the wrong ones
        r = int(relevant.sum(dim=1).max())
        first = relevant.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :r]  # correct ones first
        gt_ids = candidate_ids.gather(1, first).where(relevant.gather(1, first), -2)  # [N, R], -2 = none
        wrong = ~relevant & (candidate_ids >= 0)
        duplicate_gt = ((candidate_ids.unsqueeze(2) == gt_ids.unsqueeze(1)) & wrong.unsqueeze(2)).flatten(1).any(1)
    else:
        duplicate_gt = torch.zeros(n, dtype=torch.bool)
    return RowOutcomes(hit, pred, gt, top, tied, tie_decided, duplicate_gt)


def precision_at_1(scores: Sequence[torch.Tensor] | torch.Tensor, tie_rule: str = "first") -> torch.Tensor:
    """Per-row hit (1.0/0.0): the ground truth (index 0) has the highest score. `scores`: one 1-D tensor
    per row (any lengths) or a padded [N, K] matrix with -inf padding."""
    if not isinstance(scores, torch.Tensor):
        k = max((len(s) for s in scores), default=0)
        padded = torch.full((len(scores), k), float("-inf"))
        for i, s in enumerate(scores):  # padding the input, not scoring
            padded[i, : len(s)] = s.float()
        scores = padded
    return row_outcomes(scores, tie_rule=tie_rule).hit.float()
