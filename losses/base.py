"""The shared core of the contrastive losses: one call signature, one gather, one masking rule.

Every loss is called as `loss(query, target, target_keys=None) -> scalar` where `query` is
[B, d], `target` is [B + M, d] (row i of the first B is query i's positive, the M extra rows
are explicit hard negatives shared by the batch), embeddings are already L2-normalised, and
`target_keys` (int64 [B + M], equal keys = identical target) masks, in the softmax denominator,
every column that holds a copy of the row's own positive (a false negative, METHODS §2.1).
Subclasses change only the logits through `adjust_negative_logits`.

Multi-vector embeddings ([B, L, d] token vectors, zero rows = no token) go through the same core: the one hook is
`similarity(queries, documents)`, the dot product for [B, d] and late-interaction MaxSim for [B, L, d]
(`losses/late_interaction.py`; a multi-vector model installs its own, e.g. `meanmaxsim`).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .gather import GatheredBatch, gather_contrastive_batch
from .late_interaction import Similarity
from .matryoshka import Matryoshka

NEG_INF = float("-inf")


class Temperature(nn.Module):
    """τ, fixed or learnable. Learnable τ is stored as log(1/τ) and clamped to [min, max]."""

    def __init__(self, value: float = 0.02, learnable: bool = False, min_value: float = 0.005, max_value: float = 1.0):
        super().__init__()
        for name, v in (("temperature", value), ("temperature_min", min_value), ("temperature_max", max_value)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"loss.{name} must be a number, got {v!r} ({type(v).__name__})")
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"temperature must be a positive finite number, got {value!r}")
        if not (0 < min_value <= value <= max_value):
            raise ValueError(f"temperature {value} must lie in [min {min_value}, max {max_value}]")
        self.learnable = bool(learnable)
        self.min_value, self.max_value = float(min_value), float(max_value)
        self.fixed_value = float(value)
        if self.learnable:
            # One element, not a scalar: FSDP refuses 0-d parameters.
            self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / value)]))

    def scale(self) -> torch.Tensor | float:
        """The logit scale 1/τ: a tensor (differentiable, clamped) when learnable, else an exact float."""
        if not self.learnable:
            return 1.0 / self.fixed_value
        lo, hi = math.log(1.0 / self.max_value), math.log(1.0 / self.min_value)
        return self.log_scale.clamp(lo, hi).exp().squeeze(0)

    @property
    def value(self) -> float:
        if not self.learnable:
            return self.fixed_value
        return float(1.0 / self.scale().detach())


def full_precision(*tensors: torch.Tensor):
    """A context in which the ops on `tensors` run in (at least) fp32: autocast is switched off for their
    device. `a.float() @ b.float().T` alone is not enough: under autocast (Lightning's `bf16-mixed` wraps every
    step in it) the matmul would cast its fp32 inputs back to bf16."""
    devices = {t.device.type for t in tensors}
    stack = contextlib.ExitStack()
    for device in devices:
        if device in ("cpu", "cuda", "xpu", "mps", "hpu", "xla"):
            stack.enter_context(torch.autocast(device_type=device, enabled=False))
    return stack


def similarity_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`a @ b.T` computed in fp32 (fp64 inputs stay fp64) whatever the autocast context; the gradient flows
    back to `a` and `b` in their own dtype."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    with full_precision(a, b):
        return a.to(dtype) @ b.to(dtype).T


def _duplicate_mask(row_keys: torch.Tensor, col_keys: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[R, C] True where column c is a copy of row r's positive but is not the label column."""
    same = row_keys[:, None] == col_keys[None, :]
    same[torch.arange(labels.shape[0], device=labels.device), labels] = False
    return same


class ContrastiveLoss(nn.Module):
    """InfoNCE-family loss over in-batch (gathered) and explicit hard negatives.

    Direction query→target: each local query against every gathered positive and negative.
    Direction target→query (when `symmetric`): each local positive against every gathered query.
    Per-row losses are reduced so that the DDP-averaged gradient equals the gradient of the mean
    over all N rows of all ranks (for equal per-rank batches this is the plain local mean).
    """

    def __init__(
        self,
        temperature: float = 0.02,
        symmetric: bool = False,
        learnable_temperature: bool = False,
        temperature_min: float = 0.005,
        temperature_max: float = 1.0,
        matryoshka_dims: list[int] | None = None,
        matryoshka_weights: list[float] | None = None,
    ):
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature, temperature_min, temperature_max)
        self.symmetric = bool(symmetric)
        # Optional: the loss taken on re-normalised embedding prefixes (losses/matryoshka.py).
        self.matryoshka = Matryoshka.from_config(matryoshka_dims, matryoshka_weights)
        #: s(queries, documents) -> [R, C], the hook every score goes through (dot, or MaxSim for token vectors).
        self.similarity: Similarity = Similarity()

    def adjust_negative_logits(self, sim: torch.Tensor) -> torch.Tensor | None:
        """Additive term for negative logits given raw similarities; None means no change."""
        return None

    def _direction_loss(
        self, rows: torch.Tensor, cols: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None,
        reverse: bool = False,
    ) -> torch.Tensor:
        # `reverse`: the rows are targets and the columns queries; scores stay s(query, target) (MaxSim is asymmetric).
        similarity = (lambda r, c: self.similarity(c, r).T) if reverse else self.similarity
        if self.matryoshka is not None:
            return self.matryoshka.combine(rows, cols, lambda sim, r: self._similarity_loss(
                sim, labels[r], None if mask is None else mask[r]), list(self.parameters()), similarity)
        sim = similarity(rows, cols)
        return self._similarity_loss(sim, labels, mask)

    def _similarity_loss(self, sim: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Per-row cross-entropy from raw similarities [R, C] (the label column is each row's positive)."""
        logits = sim * self.temperature.scale()
        extra = self.adjust_negative_logits(sim)
        if extra is not None:
            # The positive keeps its plain logit: zero the adjustment on the label column.
            extra = extra.clone()
            extra[torch.arange(labels.shape[0], device=labels.device), labels] = 0
            logits = logits + extra
        if mask is not None:
            logits = logits.masked_fill(mask, NEG_INF)
        return nn.functional.cross_entropy(logits, labels, reduction="none")

    def _reduce(self, per_row: torch.Tensor, g: GatheredBatch) -> torch.Tensor:
        # sum / N · W: DDP averages gradients over W ranks, so the result is d(mean over N)/dθ.
        return per_row.sum() * (g.world_size / g.total)

    def forward(
        self, query: torch.Tensor, target: torch.Tensor, target_keys: torch.Tensor | None = None
    ) -> torch.Tensor:
        if query.ndim != target.ndim or query.ndim not in (2, 3) or query.shape[-1] != target.shape[-1]:
            raise ValueError(f"expected query [B, d] and target [B+M, d] (or [B, Lq, d] and [B+M, Lt, d] token vectors), "
                             f"got {tuple(query.shape)} and {tuple(target.shape)}")
        # Similarities and logits in fp32 whatever the embedding dtype and the autocast context (bf16 logits
        # lose the ranking at τ=0.02: between 32 and 64 they are rounded to steps of 0.25). The casts below are
        # differentiable, so bf16 embeddings receive their gradient in bf16.
        with full_precision(query, target):
            return self._forward_fp32(query, target, target_keys)

    def _forward_fp32(self, query: torch.Tensor, target: torch.Tensor, target_keys: torch.Tensor | None) -> torch.Tensor:
        dtype = torch.promote_types(torch.promote_types(query.dtype, target.dtype), torch.float32)
        query, target = query.to(dtype), target.to(dtype)
        g = gather_contrastive_batch(query, target, target_keys)
        # The local rows enter as themselves (not as their gathered copy) so autograd reaches them
        # directly; the gathered copy contributes the other ranks' gradients through the gather.
        local_q, local_p = query, target[: query.shape[0]]
        labels = torch.arange(g.local, device=query.device) + g.offset
        columns = torch.cat([g.positives, g.negatives], dim=0)
        mask = None
        if g.positive_keys is not None:
            col_keys = torch.cat([g.positive_keys, g.negative_keys], dim=0)
            mask = _duplicate_mask(g.positive_keys[labels], col_keys, labels)
        loss = self._direction_loss(local_q, columns, labels, mask)
        if self.symmetric:
            mask_t = None
            if g.positive_keys is not None:
                # Query k is a false negative for positive j when k's own positive is identical to j.
                mask_t = _duplicate_mask(g.positive_keys[labels], g.positive_keys, labels)
            loss = 0.5 * (loss + self._direction_loss(local_p, g.queries, labels, mask_t, reverse=True))
        return self._reduce(loss, g)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature.value:g}, learnable={self.temperature.learnable}, symmetric={self.symmetric}"
                + (f", {self.matryoshka}" if self.matryoshka is not None else ""))
