"""Distillation from a teacher's scores over each row's candidates (METHODS §11), alone or added to InfoNCE.

For query i with candidates c_1..c_n (its positive, its mined negatives, and any in-batch target the teacher
scored for it), teacher scores t_k (a reranker's logits or a larger embedder's similarities, computed offline by
`python mine.py mining.method=teacher`) and student similarities s_k = ⟨q_i, c_k⟩:

    KL_i = KL( softmax(t/τ_t) ‖ softmax(s/τ_s) ) = Σ_k p_k (log p_k − log softmax(s/τ_s)_k),  p = softmax(t/τ_t)
    L    = w_c · L_InfoNCE + w_d · mean_i KL_i            (w_c = 0: distillation alone)

(× τ_s² with `temperature_squared`, Hinton et al.'s scaling, as sentence-transformers' DistillKLDivLoss does.)
Both softmaxes run over the candidates present in the batch: a scored candidate that is not among the batch's
targets (a negative cut by `data.max_negatives_per_pair`, an in-batch candidate of another batch) leaves both.
Candidates are matched to the batch's target columns by their `target_keys` (an identical target is the same
candidate wherever it sits), after the cross-device gather, so a row sees the same candidates on any number of
ranks. The InfoNCE part is the shared contrastive core with all its options (symmetric, in-batch false-negative
masks, Matryoshka); the KL is taken in the query→target direction. FlagEmbedding's `kd_loss_type` and NeMo
AutoModel's `distill_bi_encoder` distil rerankers the same way; Qwen3-VL-Embedding distils its reranker in stage 3.
"""

from __future__ import annotations

import math

import torch

from .base import ContrastiveLoss, RowInputs
from .gather import GatheredBatch

#: `teacher_keys` entry of a padding slot (target keys are non-negative 63-bit integers).
NO_CANDIDATE = -1


def candidate_columns(teacher_keys: torch.Tensor, column_keys: torch.Tensor, labels: torch.Tensor,
                      positive_keys: torch.Tensor) -> torch.Tensor:
    """[R, K] index of the column holding each scored candidate (-1: not in this batch, or padding).

    A candidate identical to the row's own positive maps to the row's label column; any other to the first column
    with its key (the gathered order is the single-process order, so this is the same column on any world size)."""
    n_cols = column_keys.shape[0]
    sorted_keys, order = torch.sort(column_keys, stable=True)  # stable: the first of equal keys comes first
    at = torch.searchsorted(sorted_keys, teacher_keys.clamp_min(0)).clamp_max(max(n_cols - 1, 0))
    found = (teacher_keys >= 0) & (sorted_keys[at] == teacher_keys)
    cols = torch.where(found, order[at], NO_CANDIDATE)
    own = teacher_keys == positive_keys[:, None]
    return torch.where(own, labels[:, None].expand_as(cols), cols)


class Distillation(ContrastiveLoss):
    """KL distillation from teacher scores, optionally plus InfoNCE; see the module docstring for the formula."""

    def __init__(
        self,
        temperature: float = 0.02,
        teacher_temperature: float = 0.02,
        student_temperature: float | None = None,
        distill_weight: float = 1.0,
        contrastive_weight: float = 0.0,
        temperature_squared: bool = False,
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
        super().__init__(temperature, symmetric, learnable_temperature, temperature_min, temperature_max,
                         matryoshka_dims, matryoshka_weights, false_negative_margin, guide_margin, query_query,
                         document_document)
        for name, value, positive in (("teacher_temperature", teacher_temperature, True),
                                      ("student_temperature", student_temperature, True),
                                      ("distill_weight", distill_weight, False),
                                      ("contrastive_weight", contrastive_weight, False)):
            if value is None and name == "student_temperature":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise ValueError(f"loss.{name} must be a {'positive' if positive else 'non-negative'} finite number, "
                                 f"got {value!r}")
        if distill_weight == 0:
            raise ValueError("loss.distill_weight=0 leaves no distillation: use loss=infonce instead")
        if not isinstance(temperature_squared, bool):
            raise TypeError(f"loss.temperature_squared must be true or false, got {temperature_squared!r}")
        self.teacher_temperature = float(teacher_temperature)
        self.student_temperature = None if student_temperature is None else float(student_temperature)
        self.distill_weight, self._contrastive_weight = float(distill_weight), float(contrastive_weight)
        self.temperature_squared = temperature_squared

    @property
    def uses_teacher(self) -> bool:
        return True

    def contrastive_weight(self) -> float:
        return self._contrastive_weight

    def _student_scale(self) -> torch.Tensor | float:
        """1/τ_s: the KL's own student temperature, else the contrastive temperature (learnable or not)."""
        return 1.0 / self.student_temperature if self.student_temperature is not None else self.temperature.scale()

    def teacher_inputs(self, g: GatheredBatch, labels: torch.Tensor, teacher_keys, teacher_scores):
        if teacher_keys is None or teacher_scores is None:
            raise ValueError("loss=distill needs teacher scores for every row (teacher_keys, teacher_scores): score "
                             "the training data with `python mine.py mining.method=teacher …` and train with "
                             "data.teacher_scores=<the directory it prints>")
        if g.positive_keys is None:
            raise ValueError("loss=distill matches teacher scores to the batch's targets by target_keys; pass them")
        if teacher_keys.shape != teacher_scores.shape or teacher_keys.ndim != 2 or teacher_keys.shape[0] != g.local:
            raise ValueError(f"teacher_keys {tuple(teacher_keys.shape)} and teacher_scores {tuple(teacher_scores.shape)}"
                             f" must both be [B={g.local}, K]")
        keys = teacher_keys.to(labels.device)
        column_keys = torch.cat([g.positive_keys, g.negative_keys], dim=0)
        cols = candidate_columns(keys, column_keys, labels, g.positive_keys[labels])
        present = cols >= 0
        scores = teacher_scores.to(device=labels.device, dtype=torch.float64)
        if not bool(torch.isfinite(scores[keys >= 0]).all()):
            raise ValueError("teacher_scores hold a non-finite value for a scored candidate: re-score the data with "
                             "`python mine.py mining.method=teacher mining.force=true`")
        # The teacher's distribution over the candidates present in this batch (fp64: its temperature may be small).
        logits = torch.where(present, scores / self.teacher_temperature, -math.inf)
        log_p = torch.log_softmax(torch.where(present.any(1, keepdim=True), logits, 0.0), dim=1)
        return cols, torch.where(present, log_p, -math.inf).to(torch.promote_types(g.queries.dtype, torch.float32))

    def extra_row_loss(self, sim: torch.Tensor, inputs: RowInputs) -> torch.Tensor:
        cols, log_p = inputs.candidates, inputs.teacher_log_probs
        present = cols >= 0
        s = sim.gather(1, cols.clamp_min(0)) * self._student_scale()
        # Absent candidates leave the student's softmax; a row with none gets a finite dummy (its term is 0).
        s = torch.where(present, s, torch.where(present.any(1, keepdim=True), -math.inf, 0.0))
        log_q = torch.log_softmax(s, dim=1)
        p = log_p.exp()
        kl = torch.where(present, p * (torch.where(present, log_p, 0.0) - torch.where(present, log_q, 0.0)), 0.0)
        kl = kl.sum(1)
        if self.temperature_squared:
            kl = kl / self._student_scale() ** 2
        return self.distill_weight * kl

    def extra_repr(self) -> str:
        student = "τ" if self.student_temperature is None else f"{self.student_temperature:g}"
        return (f"teacher_temperature={self.teacher_temperature:g}, student_temperature={student}, "
                f"distill_weight={self.distill_weight:g}, contrastive_weight={self._contrastive_weight:g}, "
                f"temperature_squared={self.temperature_squared}, " + super().extra_repr())
