"""Hardness-weighted InfoNCE (LLaVE: "Large Language and Vision Embedding Models with
Hardness-Weighted Contrastive Learning", Lan et al., 2025; METHODS §2.2).

Each negative is weighted by its own detached similarity, the positive is not:

    w_ij = exp(α · sg(s_ij))  for j ≠ i,   w_ii = 1
    L_i  = −log( exp(s_ii/τ) / ( exp(s_ii/τ) + Σ_{j≠i} w_ij · exp(s_ij/τ) ) )

which is cross-entropy after adding α·sg(s_ij) to every negative logit (explicit hard negatives
included; the query–query / document–document columns too, when on). Both directions are averaged by default, as in the reference code. Defaults τ = 0.02,
α = 0.5 (the released 2B script uses α = 9). α = 0 is exactly InfoNCE.
"""

from __future__ import annotations

import math

import torch

from .base import ContrastiveLoss


class HardnessWeightedInfoNCE(ContrastiveLoss):
    """InfoNCE whose negatives are re-weighted by exp(α · detached similarity)."""

    def __init__(
        self,
        temperature: float = 0.02,
        alpha: float = 0.5,
        symmetric: bool = True,
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
        if not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        self.alpha = float(alpha)

    def adjust_negative_logits(self, sim: torch.Tensor) -> torch.Tensor:
        return self.alpha * sim.detach()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, " + super().extra_repr()
