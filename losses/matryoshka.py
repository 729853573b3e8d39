"""Matryoshka representation learning for any contrastive loss (Kusupati et al., 2022, "Matryoshka
Representation Learning", arXiv:2205.13147), so that the first k dimensions of an embedding, re-normalised,
are an embedding on their own.

For dims k_1 < … < k_m (≤ d) and weights w_1 … w_m (default 1 each):

    L = Σ_k w_k · L_base( normalize(q[:, :k]), normalize(t[:, :k]) )

a weighted *sum*, the convention of sentence-transformers' `MatryoshkaLoss` (only the listed dims are
trained: list d itself to keep training the full embedding). Every loss of this package is a function of
the similarity matrix, so the prefixes are not materialised: the prefix similarities are built from block
products, U_k = Σ_{blocks ≤ k} q_block · t_blockᵀ (together one d-wide matmul, as for the plain loss), then
re-normalised, S_k = U_k / (‖q[:, :k]‖ ‖t[:, :k]‖ᵀ). Each extra dim costs elementwise work on one [R, C]
matrix, not another matmul. The cross-device gather happens once, on the full embeddings, before this.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

#: F.normalize's floor on the norm, so a zero prefix behaves as it would there.
NORM_EPS = 1e-12


class Matryoshka:
    """The dims and weights of a Matryoshka loss, and the combination of per-prefix losses."""

    def __init__(self, dims: Sequence[int], weights: Sequence[float] | None = None):
        dims = list(dims)
        if not dims:
            raise ValueError("loss.matryoshka_dims is empty; give at least one dimension, e.g. [1536, 768, 256], "
                             "or null to turn Matryoshka off")
        for k in dims:
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"loss.matryoshka_dims must hold positive integers, got {k!r} in {dims}")
        if len(set(dims)) != len(dims):
            raise ValueError(f"loss.matryoshka_dims has repeated dimensions: {dims}")
        if weights is None:
            weights = [1.0] * len(dims)
        weights = list(weights)
        if len(weights) != len(dims):
            raise ValueError(f"loss.matryoshka_weights has {len(weights)} entries but loss.matryoshka_dims has "
                             f"{len(dims)}: give one weight per dimension (or null for 1 each)")
        for w in weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"loss.matryoshka_weights must be finite non-negative numbers, got {w!r}")
        # Ascending, so that every prefix similarity extends the previous one by one block.
        order = sorted(range(len(dims)), key=dims.__getitem__)
        self.dims = tuple(dims[i] for i in order)
        self.weights = tuple(float(weights[i]) for i in order)

    @classmethod
    def from_config(cls, dims: Sequence[int] | None, weights: Sequence[float] | None = None) -> Matryoshka | None:
        if dims is None:
            if weights is not None:
                raise ValueError("loss.matryoshka_weights is set but loss.matryoshka_dims is null; set both or neither")
            return None
        return cls(list(dims), None if weights is None else list(weights))

    def combine(self, rows: torch.Tensor, cols: torch.Tensor,
                loss_from_similarity: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Σ_k w_k · loss_from_similarity(S_k): per-row losses [R] of the re-normalised prefix similarities."""
        d = rows.shape[1]
        if self.dims[-1] > d:
            raise ValueError(f"loss.matryoshka_dims {list(self.dims)} exceeds the embedding dimension {d}; "
                             f"use dimensions ≤ {d}")
        # Similarities in fp32 (or wider) whatever autocast says (bf16 logits lose the ranking at τ = 0.02).
        dtype = torch.promote_types(torch.promote_types(rows.dtype, cols.dtype), torch.float32)
        with torch.autocast(rows.device.type, enabled=False):
            sims = _PrefixCosine.apply(rows.to(dtype), cols.to(dtype), self.dims)
            total = None
            for w, sim in zip(self.weights, sims):
                term = w * loss_from_similarity(sim)
                total = term if total is None else total + term
        return total

    def __repr__(self) -> str:
        return f"Matryoshka(dims={list(self.dims)}, weights={list(self.weights)})"


def _inverse_norms(squares: torch.Tensor) -> torch.Tensor:
    return 1.0 / squares.sqrt().clamp_min(NORM_EPS)


class _PrefixCosine(torch.autograd.Function):
    """(rows [R, d], cols [C, d], dims k_1 < … < k_m) → the m cosine-similarity matrices S_k [R, C] of the prefixes.

    Written out (rather than left to autograd) to keep the number of passes over R × C matrices low, which is what a
    Matryoshka loss costs beyond the plain one: forward, one accumulating block matmul and one rescaling per dim;
    backward, per dim, the two norm-gradient reductions and one accumulation of dL/dU, then per block the two
    matmuls of the plain loss's backward (on the suffix sum of dL/dU_k over k ≥ block)."""

    @staticmethod
    def forward(ctx, rows, cols, dims):
        bounds = list(zip((0, *dims[:-1]), dims))
        dot = row_sq = col_sq = None
        sims, inv_rows, inv_cols = [], [], []
        for start, end in bounds:
            r, c = rows[:, start:end], cols[:, start:end]
            dot = r @ c.T if dot is None else dot.addmm_(r, c.T)
            row_sq = r.square().sum(1) if row_sq is None else row_sq + r.square().sum(1)
            col_sq = c.square().sum(1) if col_sq is None else col_sq + c.square().sum(1)
            inv_r, inv_c = _inverse_norms(row_sq), _inverse_norms(col_sq)
            sims.append(dot * torch.outer(inv_r, inv_c))
            inv_rows.append(inv_r)
            inv_cols.append(inv_c)
        ctx.bounds = bounds
        ctx.save_for_backward(rows, cols, *sims, *inv_rows, *inv_cols)
        return tuple(sims)

    @staticmethod
    def backward(ctx, *grads):
        m = len(ctx.bounds)
        rows, cols, *rest = ctx.saved_tensors
        sims, inv_rows, inv_cols = rest[:m], rest[m:2 * m], rest[2 * m:]
        grad_rows, grad_cols = torch.zeros_like(rows), torch.zeros_like(cols)
        acc = None  # Σ_{k ≥ current block} dL/dU_k, U_k = rows[:, :k] · cols[:, :k]ᵀ
        for k in range(m - 1, -1, -1):
            start, end = ctx.bounds[k]
            g = grads[k]
            if g is not None:
                inv_r, inv_c = inv_rows[k], inv_cols[k]
                # S = U · a bᵀ with a = 1/‖r[:k]‖: dL/da_i = Σ_j g_ij S_ij / a_i and da_i/dr_i = −a_i³ r_i (0 where
                # the norm was clamped), so the norm term of dL/dr_i[:k] is −a_i² (Σ_j g_ij S_ij) r_i[:k].
                gs = g * sims[k]
                row_term = torch.where(inv_r < 1 / NORM_EPS, -gs.sum(1) * inv_r.square(), 0.0)
                col_term = torch.where(inv_c < 1 / NORM_EPS, -gs.sum(0) * inv_c.square(), 0.0)
                del gs
                grad_rows[:, :end].addcmul_(rows[:, :end], row_term[:, None])
                grad_cols[:, :end].addcmul_(cols[:, :end], col_term[:, None])
                scale = torch.outer(inv_r, inv_c)
                acc = g * scale if acc is None else acc.addcmul_(g, scale)
                del scale
            if acc is not None:
                grad_rows[:, start:end].addmm_(acc, cols[:, start:end])
                grad_cols[:, start:end].addmm_(acc.T, rows[:, start:end])
        return grad_rows, grad_cols, None
