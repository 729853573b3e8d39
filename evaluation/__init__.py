"""MMEB scoring: the evaluation protocol (unique-item encoding, Precision@1 with the ground truth
at index 0), aggregation (meta-tasks, IND, OOD, Overall), result tables and similarity diagnostics.
Kept apart from `embedders` and `datamodules` because it needs both a model and the eval data.

Modules: `encoding` (inference over many items: length-sorted, sharded, workers; also used by mining),
`scoring` (vectorised fp32 row scoring, ties), `diagnostics` (similarity overlap, collapse), `store`
(per-dataset score/prediction files, fingerprints, resumption), `mmeb` (the protocol), `runner` (what the
entry points call)."""

from .encoding import NonFiniteEmbeddingError, encode_unique
from .mmeb import (
    EvalDataset,
    aggregate,
    chance_level,
    evaluate_embedder,
    load_eval_suite,
    precision_at_1,
    render_table,
    write_results,
)
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
    "precision_at_1",
    "render_table",
    "write_results",
]
