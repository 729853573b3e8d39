"""Hard-negative mining with a model and an index: SaHa clustering (`saha`, pure numpy/faiss) and its cluster files
(`saha_mining`), negative-selection rules (`selection`: positive-aware filters, SimANS) and mined negatives for the
explicit-negative path (`negatives`), the in-training SaHa refresh (`refresh`), and the job `python mine.py` runs
(`job`, conf/mine.yaml). The cluster file format that `sampler=saha` reads is the data side's
(`datamodules.samplers`).
"""

from .embed import SubsetEmbeddings, embed_subset
from .negatives import mine_negatives
from .report import format_table
from .saha_mining import DEFAULT_CLASSIFICATION_SUBSETS, mine_saha

__all__ = ["DEFAULT_CLASSIFICATION_SUBSETS", "SubsetEmbeddings", "embed_subset", "format_table", "mine_negatives",
           "mine_saha"]
