"""MMEB data: row schemas and readers, image and video loading, collation, batch samplers, the training
DataModule; the offline datasets' generators in `builders/`. Knows nothing of models.

`MMEBDataModule` is imported lazily: it pulls in Lightning, which the light modules
(schema, readers, the bundled generator's workers) do not need."""

from .errors import DataError
from .schema import EvalRow, Item, TrainPair

__all__ = ["DataError", "EvalRow", "Item", "MMEBDataModule", "TrainPair"]


def __getattr__(name: str):
    if name == "MMEBDataModule":
        from .datamodule import MMEBDataModule

        return MMEBDataModule
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
