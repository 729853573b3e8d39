"""Late-interaction similarity (ColBERT, Khattab & Zaharia 2020; ColPali, Faysse et al. 2024; METHODS §10): the score
the contrastive core (`losses/base.py`) uses when embeddings are multi-vector.

Queries are [R, Lq, d], documents [C, Ld, d]: one unit vector per token, all-zero rows where there is no token
(padding, masked tokens; `embedders/multi_vector.py`). With Q_i and D_j the token sets,

    MaxSim(q, d)     = Σ_{i ∈ Q} max_{j ∈ D} ⟨q_i, d_j⟩
    MeanMaxSim(q, d) = MaxSim(q, d) / |Q|

Padding never wins a max (it is filled with the dtype's minimum before the max, as sentence-transformers does; a
zero similarity would beat genuinely negative ones) and adds nothing to the sum; a document without any token scores
`EMPTY_DOCUMENT_SCORE` (sentence-transformers' value). Scores are computed in fp32 whatever the inputs' dtype.

Memory: the R × C × Lq × Ld token interaction is never materialised whole: it is computed in blocks of rows and
columns of at most `block_elements` elements, each reduced to [r, c] scores at once (autograd keeps only the max's
[r, c, Lq] indices per block).

`Similarity` is what the core calls: the dot product for [N, d] embeddings, MaxSim (or MeanMaxSim) for [N, L, d].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

#: Score of a document without any scored token (sentence-transformers' `_EMPTY_DOCUMENT_SCORE`).
EMPTY_DOCUMENT_SCORE = -1e9
#: Elements of one block of the token interaction (fp32: 64 MiB).
BLOCK_ELEMENTS = 1 << 24
LATE_INTERACTIONS = ("maxsim", "meanmaxsim")


def token_mask(x: torch.Tensor) -> torch.Tensor:
    """[N, L] bool: rows of a [N, L, d] tensor that are tokens (not all-zero)."""
    return x.ne(0).any(dim=-1)


def _block(q: torch.Tensor, d: torch.Tensor, q_mask: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """MaxSim of every query of the block against every document of the block: [r, c] (no normalisation)."""
    inter = torch.einsum("rsh,cth->rcst", q, d)
    inter = inter.masked_fill(~d_mask[None, :, None, :], torch.finfo(inter.dtype).min)
    best = inter.max(dim=-1).values  # [r, c, Lq]
    return (best * q_mask[:, None, :].to(best.dtype)).sum(dim=-1)


def maxsim(queries: torch.Tensor, documents: torch.Tensor, mean: bool = False,
           block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """[R, C] MaxSim (`mean`: MeanMaxSim) of [R, Lq, d] queries against [C, Ld, d] documents, in fp32, computed in
    blocks of at most `block_elements` token interactions; differentiable."""
    if queries.ndim != 3 or documents.ndim != 3 or queries.shape[-1] != documents.shape[-1]:
        raise ValueError(f"MaxSim takes [R, Lq, d] queries and [C, Ld, d] documents, got {tuple(queries.shape)} and "
                         f"{tuple(documents.shape)}")
    dtype = torch.promote_types(torch.promote_types(queries.dtype, documents.dtype), torch.float32)
    r_all, lq = queries.shape[:2]
    c_all, ld = documents.shape[:2]
    if r_all == 0 or c_all == 0 or lq == 0:
        return queries.new_zeros(r_all, c_all, dtype=dtype)
    with torch.autocast(queries.device.type, enabled=False):
        q, d = queries.to(dtype), documents.to(dtype)
        q_mask, d_mask = token_mask(q), token_mask(d)
        if ld == 0:
            scores = q.new_full((r_all, c_all), EMPTY_DOCUMENT_SCORE)
        else:
            per_pair = lq * ld
            cols = max(1, min(c_all, block_elements // per_pair))
            rows = max(1, min(r_all, block_elements // (per_pair * cols)))
            scores = torch.cat([
                torch.cat([_block(q[i:i + rows], d[j:j + cols], q_mask[i:i + rows], d_mask[j:j + cols])
                           for j in range(0, c_all, cols)], dim=1)
                for i in range(0, r_all, rows)], dim=0)
            scores = scores.masked_fill(~d_mask.any(dim=1)[None, :], EMPTY_DOCUMENT_SCORE)
        if mean:
            scores = scores / q_mask.sum(dim=1).clamp_min(1).to(dtype)[:, None]
    return scores


class Similarity:
    """s(queries, documents) → [R, C]: ⟨q, d⟩ for [N, d] embeddings, `late_interaction` (maxsim | meanmaxsim) for
    [N, L, d] token vectors. Always oriented query × document (MaxSim is not symmetric)."""

    def __init__(self, late_interaction: str = "maxsim", block_elements: int = BLOCK_ELEMENTS):
        if late_interaction not in LATE_INTERACTIONS:
            raise ValueError(f"late interaction must be one of {LATE_INTERACTIONS}, got {late_interaction!r}")
        self.late_interaction = late_interaction
        self.block_elements = int(block_elements)

    def __call__(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        if queries.ndim == 2 and documents.ndim == 2:
            return queries @ documents.T
        return maxsim(queries, documents, self.late_interaction == "meanmaxsim", self.block_elements)

    def __repr__(self) -> str:
        return f"Similarity({self.late_interaction})"


def renormalized_prefix(x: torch.Tensor, k: int) -> torch.Tensor:
    """The first `k` dimensions of every token vector, re-normalised; rows without a token stay zero."""
    return nn.functional.normalize(x[..., :k], dim=-1)


def token_prefix_losses(rows: torch.Tensor, cols: torch.Tensor, dims: Sequence[int], weights: Sequence[float],
                        row_loss: Callable[[torch.Tensor, slice], torch.Tensor],
                        similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Matryoshka on the token dimension: Σ_k w_k · row_loss(similarity(prefix_k(rows), prefix_k(cols))), per row."""
    d = rows.shape[-1]
    if max(dims) > d:
        raise ValueError(f"loss.matryoshka_dims {list(dims)} exceeds the token dimension {d}; use dimensions ≤ {d}")
    total = None
    for k, w in zip(dims, weights):
        part = w * row_loss(similarity(renormalized_prefix(rows, k), renormalized_prefix(cols, k)), slice(None))
        total = part if total is None else total + part
    return total
