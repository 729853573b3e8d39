"""InfoNCE with in-batch and explicit hard negatives (van den Oord et al., 2018; METHODS §2.1).

    L_i = −log( exp(s_ii/τ) / Σ_j exp(s_ij/τ) )

j runs over every positive of the (gathered) batch and every explicit hard negative; columns
identical to row i's positive (equal `target_keys`) are removed from the denominator.
Symmetric variant: the mean of this and the target→query direction. Default τ = 0.02.
"""

from __future__ import annotations

from .base import ContrastiveLoss


class InfoNCE(ContrastiveLoss):
    """Plain InfoNCE; see the module docstring for the formula."""
