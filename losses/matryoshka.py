"""Matryoshka representation learning for any contrastive loss (Kusupati et al., 2022, "Matryoshka
Representation Learning", arXiv:2205.13147), so that the first k dimensions of an embedding, re-normalised,
are an embedding on their own.

For dims k_1 < … < k_m (≤ d) and weights w_1 … w_m (default 1 each):

    L = Σ_k w_k · L_base( normalize(q[:, :k]), normalize(t[:, :k]) )

a weighted *sum*, the convention of sentence-transformers' `MatryoshkaLoss` (only the listed dims are
trained: list d itself to keep training the full embedding). The cross-device gather happens once, on the full
embeddings, before this.

How it is computed. Every loss of this package is a per-row function of one similarity matrix, so no prefix is
materialised: the prefix similarities come from block products, U_k = Σ_{blocks ≤ k} q_block · t_blockᵀ (together one
d-wide matmul, as for the plain loss), re-normalised, S_k = U_k ∘ (1/‖q[:, :k]‖)(1/‖t[:, :k]‖)ᵀ. What an extra dim
costs is elementwise work on an R × C matrix (its softmax and gradient), which is memory-bound; so the rows are
processed in chunks small enough to stay in cache, and each chunk's gradient (through the per-row losses, the
re-normalisation and the block products) is computed right away in the forward pass. Nothing R × C is kept for the
backward pass, which only scales the stored gradients by the incoming per-row gradient (the losses reduce rows with
one common weight); an uneven incoming gradient is handled exactly by a second pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .late_interaction import token_prefix_losses

#: F.normalize's floor on the norm, so a zero prefix behaves as it would there.
NORM_EPS = 1e-12
#: Elements of one [rows chunk, C] similarity block (16 MiB in fp32): the chain of elementwise ops over a chunk stays
#: in cache. Smaller chunks mean more, smaller parallel ops, which multi-threaded runs on a busy machine pay for
#: (README, Benchmarks; `benchmarks/bench_matryoshka.py --chunk-elements N` compares).
CHUNK_ELEMENTS = 1 << 22

RowLoss = Callable[[torch.Tensor, slice], torch.Tensor]


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

    def combine(self, rows: torch.Tensor, cols: torch.Tensor, row_loss: RowLoss,
                params: Sequence[torch.Tensor] = (), similarity: Callable | None = None) -> torch.Tensor:
        """Per-row losses [R]: Σ_k w_k · row_loss(S_k[rows], rows) over the re-normalised prefix similarities.

        `row_loss(sim, rows)` maps the similarities of a slice of the rows to their losses; `params` are the tensors it
        differentiates through besides the similarities (a learnable temperature). Multi-vector rows [R, L, d] take
        the prefixes of every token vector and are scored with `similarity` (MaxSim; `losses/late_interaction.py`)."""
        if rows.ndim == 3:
            if similarity is None:
                raise ValueError("token-vector Matryoshka needs the similarity that scores them")
            return token_prefix_losses(rows, cols, self.dims, self.weights, row_loss, similarity)
        d = rows.shape[1]
        if self.dims[-1] > d:
            raise ValueError(f"loss.matryoshka_dims {list(self.dims)} exceeds the embedding dimension {d}; "
                             f"use dimensions ≤ {d}")
        # Similarities in fp32 (or wider) whatever autocast says (bf16 logits lose the ranking at τ = 0.02).
        dtype = torch.promote_types(torch.promote_types(rows.dtype, cols.dtype), torch.float32)
        rows, cols = rows.to(dtype), cols.to(dtype)
        params = [p for p in params if p.requires_grad]
        with torch.autocast(rows.device.type, enabled=False):
            if not (torch.is_grad_enabled() and (rows.requires_grad or cols.requires_grad or params)):
                return _prefix_pass(rows, cols, self, row_loss, params, None)[0]
            return _MatryoshkaRowLosses.apply(rows, cols, self, row_loss, len(params), *params)

    def __repr__(self) -> str:
        return f"Matryoshka(dims={list(self.dims)}, weights={list(self.weights)})"


def _inverse_norms(blocks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """1 / max(‖x[:, :k]‖, eps) for every prefix, from the cumulated squares of the blocks."""
    out, squares = [], None
    for b in blocks:
        part = b.square().sum(1)
        squares = part if squares is None else squares + part
        out.append(1.0 / squares.sqrt().clamp_min(NORM_EPS))
    return out


def _prefix_pass(rows, cols, spec: Matryoshka, row_loss: RowLoss, params, row_weights):
    """Per-row losses, and (when `row_weights` is given) the gradients of Σ_i row_weights_i · loss_i with respect to
    rows, cols and params, one chunk of rows at a time."""
    bounds = list(zip((0, *spec.dims[:-1]), spec.dims))
    # Contiguous blocks (and block gradients): matmuls into column slices of a row-major matrix are slow.
    row_blocks = [rows[:, s:e].contiguous() for s, e in bounds]
    col_blocks = [cols[:, s:e].contiguous() for s, e in bounds]
    inv_r, inv_c = _inverse_norms(row_blocks), _inverse_norms(col_blocks)
    n_rows, n_cols = rows.shape[0], cols.shape[0]
    chunk = max(16, CHUNK_ELEMENTS // max(n_cols, 1))
    losses = rows.new_zeros(n_rows)
    want_grad = row_weights is not None
    if want_grad:
        grad_row_blocks = [torch.zeros_like(b) for b in row_blocks]
        grad_col_blocks = [torch.zeros_like(b) for b in col_blocks]
        row_norm_terms = [rows.new_zeros(n_rows) for _ in bounds]  # -a_i² Σ_j (G ∘ S)_ij per dim
        col_norm_terms = [cols.new_zeros(n_cols) for _ in bounds]  # Σ_i (G ∘ S)_ij per dim
        grad_params = [torch.zeros_like(p) for p in params]
    for start in range(0, n_rows, chunk):
        rs = slice(start, min(start + chunk, n_rows))
        dot = None
        sims, local_grads = [], []
        for k, (w, r, c) in enumerate(zip(spec.weights, row_blocks, col_blocks)):
            dot = r[rs] @ c.T if dot is None else dot.addmm_(r[rs], c.T)
            sim = dot * torch.outer(inv_r[k][rs], inv_c[k])
            if not want_grad:
                losses[rs] += w * row_loss(sim, rs)
                continue
            with torch.enable_grad():
                sim = sim.requires_grad_()
                per_row = row_loss(sim, rs)
                grads = torch.autograd.grad((w * row_weights[rs] * per_row).sum(), [sim, *params],
                                            allow_unused=True)
            losses[rs] += w * per_row.detach()
            sims.append(sim.detach())
            local_grads.append(grads[0])
            for acc, g in zip(grad_params, grads[1:]):
                if g is not None:
                    acc += g
        if not want_grad:
            continue
        # Back through S_k = U_k ∘ a bᵀ (a, b: inverse norms of the prefixes) and U_k = Σ_{j ≤ k} r_j c_jᵀ:
        # dL/dU_k = G_k ∘ a bᵀ, summed over k ≥ j for block j; the norms add −a_i² (Σ_j G_ij S_ij) r_i[:k] (0 where
        # the norm was clamped), and likewise for the columns.
        acc = None
        for k in range(len(bounds) - 1, -1, -1):
            g, sim = local_grads[k], sims[k]
            gs = g * sim
            row_norm_terms[k][rs] = gs.sum(1)
            col_norm_terms[k] += gs.sum(0)
            del gs
            scaled = g * torch.outer(inv_r[k][rs], inv_c[k])
            acc = scaled if acc is None else acc.add_(scaled)
            grad_row_blocks[k][rs].addmm_(acc, col_blocks[k])
            grad_col_blocks[k].addmm_(acc.T, row_blocks[k][rs])
    if not want_grad:
        return losses, None
    for k in range(len(bounds)):
        a, b = inv_r[k], inv_c[k]
        row_term = torch.where(a < 1 / NORM_EPS, -row_norm_terms[k] * a.square(), 0.0)
        col_term = torch.where(b < 1 / NORM_EPS, -col_norm_terms[k] * b.square(), 0.0)
        for j in range(k + 1):  # the prefix :k spans blocks 0..k
            grad_row_blocks[j].addcmul_(row_blocks[j], row_term[:, None])
            grad_col_blocks[j].addcmul_(col_blocks[j], col_term[:, None])
    grad_rows, grad_cols = torch.zeros_like(rows), torch.zeros_like(cols)
    for (s, e), gr, gc in zip(bounds, grad_row_blocks, grad_col_blocks):
        grad_rows[:, s:e] = gr
        grad_cols[:, s:e] = gc
    return losses, (grad_rows, grad_cols, *grad_params)


class _MatryoshkaRowLosses(torch.autograd.Function):
    """Per-row Matryoshka losses whose gradients are computed in the forward pass (chunk by chunk, in cache) for a
    common weight 1 per row; backward scales them, or recomputes them for uneven incoming per-row gradients."""

    @staticmethod
    def forward(ctx, rows, cols, spec, row_loss, n_params, *params):
        losses, grads = _prefix_pass(rows, cols, spec, row_loss, params, rows.new_ones(rows.shape[0]))
        ctx.spec, ctx.row_loss, ctx.n_params = spec, row_loss, n_params
        ctx.save_for_backward(rows, cols, *params, *grads)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        saved = ctx.saved_tensors
        rows, cols = saved[0], saved[1]
        params, grads = saved[2:2 + ctx.n_params], saved[2 + ctx.n_params:]
        if bool((grad_losses == grad_losses[0]).all()):
            # The usual case: the row losses are summed with one weight (the loss reduction).
            grads = [g * grad_losses[0] for g in grads]
        else:
            _, grads = _prefix_pass(rows, cols, ctx.spec, ctx.row_loss, params, grad_losses)
        grad_rows, grad_cols, *grad_params = grads
        return (grad_rows, grad_cols, None, None, None, *grad_params)
