"""MMEB scoring: the evaluation protocol (unique-item encoding, Precision@1 with the ground truth
at index 0), aggregation (meta-tasks, IND, OOD, Overall), result tables.
Kept apart from `embedders` and `datamodules` because it needs both a model and the eval data.

Modules: `engine` (the protocol over any suite), `encoding` (inference over many items: length-sorted, sharded,
workers; also used by mining), `scoring` (vectorised fp32 row scoring, ties), `retrieval` (corpus ranking),
`store` (per-dataset score/prediction files, fingerprints, resumption), the reports `mmeb` (v1) and `mmeb_v2`,
`runner` (score a model on a configured suite and write the tables), `job` (what evaluate.py runs); `paired`
(McNemar, paired bootstrap, detectable difference), `outcomes` (per-query outcomes read back from the score and
prediction files) and `comparison` (the B − A report of compare.py)."""

from .encoding import NonFiniteEmbeddingError, encode_unique
from .engine import EvalDataset, load_eval_suite, run_protocol
from .mmeb import aggregate, chance_level, evaluate_embedder, render_table, write_results
from .scoring import precision_at_1
from .store import EvalSettings

__all__ = [
    "EvalDataset",
    "EvalSettings",
    "NonFiniteEmbeddingError",
    "aggregate",
    "chance_level",
    "encode_unique",
    "evaluate_embedder",
    "load_eval_suite",
    "run_protocol",
    "precision_at_1",
    "render_table",
    "write_results",
]
