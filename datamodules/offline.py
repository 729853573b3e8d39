"""Offline datasets built on first use: the `bundled:` entry of a data / eval_data config names the builder
(`builder: module.function`; default the bundled shapes dataset) and the keyword arguments it takes."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

DEFAULT_BUILDER = "datamodules.builders.bundled.ensure_bundled"


def ensure_offline(spec: Mapping) -> Path:
    """Call `spec["builder"]` (default: `ensure_bundled`) with the other entries of `spec`; returns its root."""
    kwargs = dict(spec)
    target = str(kwargs.pop("builder", None) or DEFAULT_BUILDER)
    module_name, _, name = target.rpartition(".")
    try:
        builder = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"bundled.builder={target!r} is not an importable function (module.function), e.g. "
                         f"{DEFAULT_BUILDER} or datamodules.builders.docstrings.ensure_docstrings") from None
    return builder(**kwargs)
