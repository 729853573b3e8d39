"""MMEB data: row schemas and readers, image loading, collation, batch samplers, the training
DataModule, the bundled offline dataset, and SaHa clustering. Knows nothing of models."""

from .datamodule import MMEBDataModule
from .errors import DataError
from .schema import EvalRow, Item, TrainPair

__all__ = ["DataError", "EvalRow", "Item", "MMEBDataModule", "TrainPair"]
