"""Atomic replacement of a generated directory tree (bundled data, mined datasets)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def swap_in_directory(built: Path, target: Path) -> None:
    """Move the finished tree `built` to `target` (same filesystem), replacing an earlier tree there.
    Readers see either the old tree or the new one, never a half-written mixture."""
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "tree")
        os.replace(built, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, target)
