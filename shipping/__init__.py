"""Shipping a trained Embedder to the tools that serve embeddings: the saved directory with its Hub model card
(`save_embedder`, `model_card`, `usage`), the training run's record on the card (`run_card`), Hub upload (`hub`),
MTEB/MIEB (`mteb`). Sits above `embedders` (the directory format itself, `embedders.saving`) and `evaluation` (the
card's MMEB table)."""

from .model_card import save_embedder, write_model_card

__all__ = ["save_embedder", "write_model_card"]
