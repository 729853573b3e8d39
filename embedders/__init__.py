"""Backbones, pooling, prompt formatting, the Embedder and the LightningModule that trains it.

The exports are imported on first use, so that `import embedders.<module>` of a light module (the config rules of
`settings`) does not pull in torch, transformers and Lightning."""

#: Exports imported on first use (a config's `_target_` names them; operations.static_signatures reads this too).
LAZY_EXPORTS = {
    "Embedder": ".embedder",
    "InputBuilder": ".embedder",
    "EmbeddingModule": ".module",
    "PromptFormat": ".prompts",
    "last_token_pool": ".pooling",
    "mean_pool": ".pooling",
    "pool": ".pooling",
}

__all__ = sorted(LAZY_EXPORTS)


def __getattr__(name: str):
    if name in LAZY_EXPORTS:
        import importlib

        return getattr(importlib.import_module(LAZY_EXPORTS[name], __name__), name)
    raise AttributeError(f"module 'embedders' has no attribute {name!r}")
