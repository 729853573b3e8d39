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


#: The file that marks a Lightning FSDP sharded checkpoint directory (it holds everything but the tensors).
SHARDED_METADATA = "meta.pt"


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / SHARDED_METADATA).is_file()


def _require_checkpoint_file(path: Path) -> None:
    """The clear error for a path that is neither a checkpoint file nor a sharded checkpoint directory."""
    if path.is_dir() and not is_sharded_checkpoint(path):
        raise FileNotFoundError(f"checkpoint {path} is a directory without {SHARDED_METADATA}: neither a checkpoint "
                                "file nor a sharded FSDP checkpoint")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """Hyperparameters, loop state etc. of a checkpoint file or of a sharded FSDP checkpoint directory,
    without materialising the weights."""
    path = Path(path)
    _require_checkpoint_file(path)
    if is_sharded_checkpoint(path):
        return torch.load(path / SHARDED_METADATA, map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def load_trained_module(path: str | os.PathLike):
    """The EmbeddingModule of a training checkpoint file (without its loss), on CPU, for export or scoring."""
    from .module import EmbeddingModule

    path = Path(path)
    if is_sharded_checkpoint(path):
        raise ValueError(f"{path} is a sharded FSDP checkpoint directory; consolidate it into one file first: "
                         f"python -m lightning.pytorch.utilities.consolidate_checkpoint {path}  "
                         f"(writes {path}.consolidated), then pass that file")
    _require_checkpoint_file(path)
    return EmbeddingModule.load_from_checkpoint(str(path), map_location="cpu", loss=None)
