"""Hard-negative mining that needs both a model and an index: SaHa clusters (`saha_mining`), mined
negatives for the explicit-negative path (`negatives`) and the in-training SaHa refresh (`refresh`).

It sits outside `datamodules` because it runs an embedder; the pure parts it builds on stay there
(`datamodules.saha` clustering, `datamodules.negatives` selection rules, `datamodules.samplers` cluster
files). Entry point: `python mine.py` (conf/mine.yaml).
"""

from .embed import SubsetEmbeddings, embed_subset
from .negatives import mine_negatives
from .report import format_table
from .saha_mining import DEFAULT_CLASSIFICATION_SUBSETS, mine_saha

__all__ = ["DEFAULT_CLASSIFICATION_SUBSETS", "SubsetEmbeddings", "embed_subset", "format_table", "mine_negatives",
           "mine_saha"]
