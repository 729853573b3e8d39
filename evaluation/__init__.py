"""MMEB scoring: the evaluation protocol (unique-item encoding, Precision@1 with the ground truth
at index 0), aggregation (meta-tasks, IND, OOD, Overall), result tables and similarity diagnostics.
Kept apart from `embedders` and `datamodules` because it needs both a model and the eval data."""

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

__all__ = [
    "EvalDataset",
    "aggregate",
    "chance_level",
    "evaluate_embedder",
    "load_eval_suite",
    "precision_at_1",
    "render_table",
    "write_results",
]
