"""Atomic checkpoint writes: a kill during a save never leaves a corrupt `last.ckpt`.

Lightning's default local write goes through a temporary file in the *system* temp directory and
`shutil.move`, which is a copy — not an atomic rename — whenever the checkpoint directory is on
another filesystem (the usual case on clusters), and never fsyncs. Here the temporary file lives
next to the target, is fsynced, and replaces the target with `os.replace` (atomic on POSIX);
the directory entry is fsynced too. Remote URLs fall back to Lightning's behaviour.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local writes are write-temp-fsync-rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path)
        fs = get_filesystem(path)
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))
