"""Backbones, pooling, prompt formatting, the Embedder and the LightningModule that trains it."""

from .embedder import Embedder, InputBuilder
from .module import EmbeddingModule
from .pooling import last_token_pool, mean_pool, pool
from .prompts import PromptFormat

__all__ = ["Embedder", "EmbeddingModule", "InputBuilder", "PromptFormat", "last_token_pool", "mean_pool", "pool"]
