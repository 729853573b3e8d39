"""Contrastive losses: pure functions of embeddings sharing one call signature and one gather."""

from .base import ContrastiveLoss, Temperature, full_precision, similarity_fp32
from .distillation import Distillation
from .gather import distributed_world, gather_contrastive_batch, gather_rows
from .hardness_weighted import HardnessWeightedInfoNCE
from .infonce import InfoNCE
from .late_interaction import Similarity, maxsim
from .matryoshka import Matryoshka

__all__ = [
    "ContrastiveLoss",
    "Distillation",
    "HardnessWeightedInfoNCE",
    "InfoNCE",
    "Matryoshka",
    "Similarity",
    "maxsim",
    "Temperature",
    "distributed_world",
    "full_precision",
    "similarity_fp32",
    "gather_contrastive_batch",
    "gather_rows",
]
