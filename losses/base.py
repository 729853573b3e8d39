"""The shared core of the contrastive losses: one call signature, one gather, one masking rule.

Every loss is called as `loss(query, target, target_keys=None, **side) -> scalar` where `query` is
[B, d], `target` is [B + M, d] (row i of the first B is query i's positive, the M extra rows
are explicit hard negatives shared by the batch), embeddings are already L2-normalised, and
`target_keys` (int64 [B + M], equal keys = identical target) masks, in the softmax denominator,
every column that holds a copy of the row's own positive (a false negative, METHODS §2.1).
`side` holds optional per-row tensors some options read: `guide_query` [B, d'] / `guide_target` [B + M, d'] (a
frozen guide model's embeddings of the same rows, for guided filtering) and `teacher_keys` / `teacher_scores`
[B, K] (losses/distillation.py).

In-batch false-negative options (METHODS §12), shared by every loss of this family:
- `false_negative_margin` m (Qwen3-VL-Embedding, m = 0.1): a negative j of row i with s_ij > s_ii + m is removed
  from the denominator (the comparison is on detached similarities);
- `guide_margin` m (GISTEmbed; 0 = its default): a negative whose guide similarity exceeds the guide similarity of
  the row's positive minus m is removed (sentence-transformers' "absolute" margin strategy);
- `query_query` / `document_document` (GTE's improved contrastive loss, Qwen3-(VL-)Embedding): the denominator of
  query i also holds exp(s(q_i, q_j)/τ) and exp(s(d_i, d_j)/τ) for j ≠ i (d = the pairs' positives), subject to
  the same masks (a q_j or d_j whose positive is identical to d_i is not a negative).
Subclasses change the logits through `adjust_negative_logits` and add per-row terms through `extra_row_loss`.

Multi-vector embeddings ([B, L, d] token vectors, zero rows = no token) go through the same core: the one hook is
`similarity(queries, documents)`, the dot product for [B, d] and late-interaction MaxSim for [B, L, d]
(`losses/late_interaction.py`; a multi-vector model installs its own, e.g. `meanmaxsim`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from .gather import GatheredBatch, gather_alongside, gather_contrastive_batch
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


@dataclass
class RowInputs:
    """What one direction's per-row loss needs besides the similarities: each row's label column, the columns
    removed from its denominator, the weight of its cross-entropy, and (distillation) its candidate columns with
    the teacher's log-probabilities over them. Sliced by rows for the Matryoshka chunks."""

    labels: torch.Tensor  # [R] int64
    mask: torch.Tensor | None  # [R, C] True = not a negative of this row
    ce_weight: float = 1.0
    candidates: torch.Tensor | None = None  # [R, K] column index, -1 = not in this batch
    teacher_log_probs: torch.Tensor | None = None  # [R, K], -inf where absent
    extra_weight: float = 0.0

    def rows(self, r) -> RowInputs:
        pick = lambda x: None if x is None else x[r]  # noqa: E731
        return replace(self, labels=self.labels[r], mask=pick(self.mask), candidates=pick(self.candidates),
                       teacher_log_probs=pick(self.teacher_log_probs))


def _or(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a | b


def _check_margin(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"loss.{name} must be a finite number or null (off), got {value!r}")
    return float(value)


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
        false_negative_margin: float | None = None,
        guide_margin: float | None = None,
        query_query: bool = False,
        document_document: bool = False,
    ):
        super().__init__()
        self.temperature = Temperature(temperature, learnable_temperature, temperature_min, temperature_max)
        self.symmetric = bool(symmetric)
        # Optional: the loss taken on re-normalised embedding prefixes (losses/matryoshka.py).
        self.matryoshka = Matryoshka.from_config(matryoshka_dims, matryoshka_weights)
        self.false_negative_margin = _check_margin("false_negative_margin", false_negative_margin)
        self.guide_margin = _check_margin("guide_margin", guide_margin)
        for name, value in (("query_query", query_query), ("document_document", document_document)):
            if not isinstance(value, bool):
                raise TypeError(f"loss.{name} must be true or false, got {value!r}")
        self.query_query, self.document_document = query_query, document_document
        #: s(queries, documents) -> [R, C], the hook every score goes through (dot, or MaxSim for token vectors).
        self.similarity: Similarity = Similarity()
        if self.matryoshka is not None and (query_query or document_document):
            raise ValueError("loss.query_query / loss.document_document with loss.matryoshka_dims is not supported "
                             "(the Matryoshka path scores one row side against one column side); turn one of them off")

    @property
    def uses_guide(self) -> bool:
        """Whether this loss needs a guide model's embeddings (`guide_query`, `guide_target`)."""
        return self.guide_margin is not None

    @property
    def uses_teacher(self) -> bool:
        """Whether this loss needs teacher scores (`teacher_keys`, `teacher_scores`)."""
        return False

    def adjust_negative_logits(self, sim: torch.Tensor) -> torch.Tensor | None:
        """Additive term for negative logits given raw similarities; None means no change."""
        return None

    def extra_row_loss(self, sim: torch.Tensor, inputs: RowInputs) -> torch.Tensor | None:
        """A per-row term added (times `inputs.extra_weight`) to the query→target direction; None = none."""
        return None

    def teacher_inputs(self, g: GatheredBatch, labels: torch.Tensor, teacher_keys, teacher_scores
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(candidate columns [R, K], teacher log-probabilities [R, K]) for `extra_row_loss`; (None, None) here."""
        return None, None

    def contrastive_weight(self) -> float:
        """The weight of the contrastive (cross-entropy) part."""
        return 1.0

    def _direction_loss(self, rows: torch.Tensor, cols: torch.Tensor, inputs: RowInputs,
                        extra_blocks: list[tuple[torch.Tensor, torch.Tensor]] = (), reverse: bool = False) -> torch.Tensor:
        # `reverse`: the rows are targets and the columns queries; scores stay s(query, target) (MaxSim is asymmetric).
        similarity = (lambda r, c: self.similarity(c, r).T) if reverse else self.similarity
        if self.matryoshka is not None:
            return self.matryoshka.combine(rows, cols, lambda sim, r: self._similarity_loss(sim, inputs.rows(r)),
                                           list(self.parameters()), similarity)
        # Extra in-batch blocks (query–query, document–document) are further columns of the same softmax.
        sim = similarity(rows, cols)
        if extra_blocks:
            sim = torch.cat([sim, *(similarity(a, b) for a, b in extra_blocks)], dim=1)
        return self._similarity_loss(sim, inputs)

    def _similarity_loss(self, sim: torch.Tensor, inputs: RowInputs) -> torch.Tensor:
        """Per-row loss from raw similarities [R, C] (the label column is each row's positive): the weighted
        cross-entropy plus any `extra_row_loss`."""
        labels = inputs.labels
        rows = torch.arange(labels.shape[0], device=labels.device)
        out = None
        if inputs.ce_weight:
            logits = sim * self.temperature.scale()
            extra = self.adjust_negative_logits(sim)
            if extra is not None:
                # The positive keeps its plain logit: zero the adjustment on the label column.
                extra = extra.clone()
                extra[rows, labels] = 0
                logits = logits + extra
            mask = inputs.mask
            if self.false_negative_margin is not None:
                # Qwen3-VL-Embedding: a negative scoring above s_pos + m is taken for a false negative.
                detached = sim.detach()
                above = detached > detached[rows, labels][:, None] + self.false_negative_margin
                above[rows, labels] = False
                mask = _or(mask, above)
            if mask is not None:
                logits = logits.masked_fill(mask, NEG_INF)
            out = inputs.ce_weight * nn.functional.cross_entropy(logits, labels, reduction="none")
        if inputs.extra_weight:
            term = inputs.extra_weight * self.extra_row_loss(sim, inputs)
            out = term if out is None else out + term
        return out if out is not None else 0 * sim.sum(1)

    def _reduce(self, per_row: torch.Tensor, g: GatheredBatch) -> torch.Tensor:
        # sum / N · W: DDP averages gradients over W ranks, so the result is d(mean over N)/dθ.
        return per_row.sum() * (g.world_size / g.total)

    def forward(
        self, query: torch.Tensor, target: torch.Tensor, target_keys: torch.Tensor | None = None, *,
        guide_query: torch.Tensor | None = None, guide_target: torch.Tensor | None = None,
        teacher_keys: torch.Tensor | None = None, teacher_scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if query.ndim != target.ndim or query.ndim not in (2, 3) or query.shape[-1] != target.shape[-1]:
            raise ValueError(f"expected query [B, d] and target [B+M, d] (or [B, Lq, d] and [B+M, Lt, d] token vectors), "
                             f"got {tuple(query.shape)} and {tuple(target.shape)}")
        if self.uses_guide and (guide_query is None or guide_target is None):
            raise ValueError("loss.guide_margin is set (guided in-batch false-negative filtering), but no guide "
                             "embeddings were given: set model.guide (a frozen guide embedder, e.g. "
                             "+model.guide.embedder_dir=DIR), or loss.guide_margin=null")
        # Similarities and logits in fp32 whatever the embedding dtype and the autocast context (bf16 logits
        # lose the ranking at τ=0.02: between 32 and 64 they are rounded to steps of 0.25). The casts below are
        # differentiable, so bf16 embeddings receive their gradient in bf16.
        with full_precision(query, target):
            return self._forward_fp32(query, target, target_keys, guide_query, guide_target, teacher_keys,
                                      teacher_scores)

    def _forward_fp32(self, query, target, target_keys, guide_query, guide_target, teacher_keys, teacher_scores
                      ) -> torch.Tensor:
        dtype = torch.promote_types(torch.promote_types(query.dtype, target.dtype), torch.float32)
        query, target = query.to(dtype), target.to(dtype)
        g = gather_contrastive_batch(query, target, target_keys)
        # The local rows enter as themselves (not as their gathered copy) so autograd reaches them
        # directly; the gathered copy contributes the other ranks' gradients through the gather.
        local_q, local_p = query, target[: query.shape[0]]
        labels = torch.arange(g.local, device=query.device) + g.offset
        rows = torch.arange(g.local, device=query.device)
        columns = torch.cat([g.positives, g.negatives], dim=0)
        n = g.total
        keys = (g.positive_keys, torch.cat([g.positive_keys, g.negative_keys], dim=0)) \
            if g.positive_keys is not None else None
        guide = None
        if self.uses_guide:
            gq, gp, gn = gather_alongside(g, guide_query.to(dtype), guide_target.to(dtype))
            guide = (gq, gp, torch.cat([gp, gn], dim=0))

        # Query → target: the targets, then (optionally) the other queries and the positives' neighbours.
        mask = _duplicate_mask(keys[0][labels], keys[1], labels) if keys is not None else None
        if guide is not None:
            gq, gp, gcols = guide
            g_pos = (gq[labels] * gp[labels]).sum(1, keepdim=True)
            over = similarity_fp32(gq[labels], gcols) > g_pos - self.guide_margin
            over[rows, labels] = False
            mask = _or(mask, over)
        blocks, block_masks = [], []
        for enabled, anchors, others, guide_pair in (
                (self.query_query, local_q, g.queries, None if guide is None else (guide[0], guide[0])),
                (self.document_document, local_p, g.positives, None if guide is None else (guide[1], guide[1]))):
            if not enabled:
                continue
            blocks.append((anchors, others))
            self_or_same = torch.zeros(g.local, n, dtype=torch.bool, device=query.device)
            self_or_same[rows, labels] = True  # j ≠ i
            if keys is not None:  # q_j / d_j whose positive is identical to d_i is not a negative either
                self_or_same |= keys[0][labels][:, None] == keys[0][None, :]
            if guide_pair is not None:
                ga, go = guide_pair
                self_or_same |= similarity_fp32(ga[labels], go) > g_pos - self.guide_margin
            block_masks.append(self_or_same)
        if blocks:
            if mask is None:
                mask = torch.zeros(g.local, columns.shape[0], dtype=torch.bool, device=query.device)
            mask = torch.cat([mask, *block_masks], dim=1)
        candidates, teacher_log_probs = self.teacher_inputs(g, labels, teacher_keys, teacher_scores)
        w = self.contrastive_weight()
        forward_inputs = RowInputs(labels, mask, w * (0.5 if self.symmetric else 1.0), candidates, teacher_log_probs,
                                   1.0 if candidates is not None else 0.0)
        loss = self._direction_loss(local_q, columns, forward_inputs, blocks)
        if self.symmetric and w:
            mask_t = None
            if keys is not None:
                # Query k is a false negative for positive j when k's own positive is identical to j.
                mask_t = _duplicate_mask(keys[0][labels], keys[0], labels)
            if guide is not None:
                gq, gp, _ = guide
                over = similarity_fp32(gp[labels], gq) > g_pos - self.guide_margin
                over[rows, labels] = False
                mask_t = _or(mask_t, over)
            loss = loss + self._direction_loss(local_p, g.queries, RowInputs(labels, mask_t, 0.5 * w), reverse=True)
        return self._reduce(loss, g)

    def extra_repr(self) -> str:
        options = [f"false_negative_margin={self.false_negative_margin:g}" if self.false_negative_margin is not None
                   else "", f"guide_margin={self.guide_margin:g}" if self.guide_margin is not None else "",
                   "query_query=True" if self.query_query else "",
                   "document_document=True" if self.document_document else ""]
        return (f"temperature={self.temperature.value:g}, learnable={self.temperature.learnable}, symmetric={self.symmetric}"
                + (f", {self.matryoshka}" if self.matryoshka is not None else "")
                + "".join(f", {o}" for o in options if o))
