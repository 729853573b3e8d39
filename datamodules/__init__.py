"""MMEB data: row schemas and readers, image and video loading, collation, batch samplers, the training
DataModule; the offline datasets' generators in `builders/`. Knows nothing of models.

`MMEBDataModule` is imported lazily: it pulls in Lightning, which the light modules
(schema, readers, the bundled generator's workers) do not need."""

from .errors import DataError
from .schema import EvalRow, Item, TrainPair

__all__ = ["DataError", "EvalRow", "Item", "MMEBDataModule", "MixtureDataModule", "TrainPair"]


#: Exports imported on first use (a config's `_target_` names them; operations.static_signatures reads this too).
LAZY_EXPORTS = {"MMEBDataModule": ".datamodule", "MixtureDataModule": ".mixture"}


def __getattr__(name: str):
    if name in LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(LAZY_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
