"""Checkpoint files: atomic writes, the previous version kept, unreadable files named, and the
newest readable checkpoint found for a resume.

Lightning's default local write goes through a temporary file in the *system* temp directory and
`shutil.move`, which is a copy — not an atomic rename — whenever the checkpoint directory is on
another filesystem (the usual case on clusters), and never fsyncs. Here the temporary file lives
next to the target, is fsynced, gets the mode the umask asks for, and replaces the target with
`os.replace` (atomic on POSIX); the directory entry is fsynced too. With `keep_previous` the file it
replaces stays as `<name>.prev.ckpt` (a hard link: no copy), so a checkpoint damaged after it was
written (a truncated copy, a full disk elsewhere) still leaves one to resume from. Remote URLs fall back
to Lightning's behaviour. Temporary files of saves that were killed are removed by `clean_orphans`.
"""

from __future__ import annotations

import io
import logging
import os
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.distributed.checkpoint import FileSystemReader, load
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from operations.atomic import respect_umask
from operations.disk_space import disk_full_error, is_disk_full

from .module import EmbeddingModule

log = logging.getLogger(__name__)

#: Names of the temporary files of `atomic_torch_save` (`.<target name>.<random>.tmp`).
_TMP = re.compile(r"^\..+\.ckpt\.[^.]+\.tmp$")


def previous_path(path: str | os.PathLike) -> Path:
    """Where `keep_previous` keeps the version a save replaced: last.ckpt → last.prev.ckpt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) checkpoint dict: about what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def atomic_torch_save(obj: Any, path: str | os.PathLike, keep_previous: bool = False) -> None:
    """torch.save to a temporary file beside `path`, fsync, rename. A full disk raises `DiskFullError` naming the
    file and the space it needs; the earlier checkpoint (and its `.prev`) stay as they were."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        respect_umask(tmp)
        if keep_previous and path.is_file() and not path.is_symlink():
            prev_tmp = path.with_name(f".{path.name}.prev.tmp")
            prev_tmp.unlink(missing_ok=True)
            os.link(path, prev_tmp)
            os.replace(prev_tmp, previous_path(path))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, Exception) and is_disk_full(err):
            raise disk_full_error(path, tensor_bytes(obj), err, "checkpoint") from err
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose local writes are write-temp-fsync-rename. `keep_previous`: keep the replaced
    version of each file as `<name>.prev.ckpt` (costs one more checkpoint of disk)."""

    def __init__(self, keep_previous: bool = False):
        super().__init__()
        self.keep_previous = bool(keep_previous)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}")
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path)
        fs = get_filesystem(path)
        fs.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"), keep_previous=self.keep_previous)


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


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that is truncated, corrupt or not a checkpoint."""


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """Hyperparameters, loop state etc. of a checkpoint file or of a sharded FSDP checkpoint directory,
    without materialising the weights. An unreadable file raises UnreadableCheckpointError naming it."""
    path = Path(path)
    _require_checkpoint_file(path)
    target = path / SHARDED_METADATA if is_sharded_checkpoint(path) else path
    try:
        if not is_sharded_checkpoint(path) and zipfile.is_zipfile(target):
            # A truncated file still opens lazily (mmap); the zip's central directory says whether every
            # member is complete, and testzip() reads them all (CRC check) only when asked below.
            with zipfile.ZipFile(target) as zf:
                for info in zf.infolist():
                    if info.header_offset + info.compress_size > target.stat().st_size:
                        raise UnreadableCheckpointError(f"member {info.filename} is cut short")
        return torch.load(target, map_location="cpu", weights_only=True, mmap=not is_sharded_checkpoint(path))
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, UnreadableCheckpointError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise UnreadableCheckpointError(
            f"checkpoint {target} cannot be read: it is truncated or corrupt ({type(e).__name__}: {e}). An "
            "interrupted copy or a full disk does this; use an older checkpoint of the run") from None


def checkpoint_step(path: str | os.PathLike) -> int:
    """The global step a readable checkpoint was saved at (UnreadableCheckpointError otherwise)."""
    return int(checkpoint_metadata(path).get("global_step", 0))


def newest_readable_checkpoint(directory: str | os.PathLike) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The checkpoint to resume a run from: the readable one with the highest global step among the files
    (and sharded directories) in `directory`, preferring last.ckpt on ties. Returns it (None if there is
    none) and the unreadable ones skipped, each with the reason."""
    directory = Path(directory)
    if not directory.is_dir():
        return None, []
    candidates = [p for p in directory.iterdir()
                  if (p.suffix == ".ckpt" and not p.name.startswith(".")) and (p.is_file() or is_sharded_checkpoint(p))]
    readable, skipped = [], []
    for p in candidates:
        try:
            readable.append((checkpoint_step(p), p.name == "last.ckpt", p))
        except UnreadableCheckpointError as e:
            skipped.append((p, str(e)))
    if not readable:
        return None, skipped
    return max(readable, key=lambda t: (t[0], t[1]))[2], skipped


def clean_orphans(directory: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of checkpoint saves that were killed mid-write. Call only while holding
    the run's lock (no save of this run can be in progress)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = [p for p in directory.iterdir() if p.is_file() and _TMP.match(p.name)]
    for p in removed:
        p.unlink(missing_ok=True)
    if removed:
        log.info("removed %d temporary file(s) of interrupted checkpoint saves in %s: %s", len(removed), directory,
                 ", ".join(p.name for p in removed))
    return removed


def read_sharded_checkpoint(path: str | os.PathLike) -> dict:
    """A sharded FSDP checkpoint directory (torch.distributed.checkpoint shards + Lightning's meta.pt) as one
    checkpoint dict on this process, CPU: meta.pt's entries and the whole `state_dict` (optimizer states are not
    read). Needs no process group. (Lightning's consolidate_checkpoint utility expects FSDP1's layout.)"""
    path = Path(path)
    checkpoint = checkpoint_metadata(path)
    reader = FileSystemReader(str(path))
    try:
        saved = reader.read_metadata().state_dict_metadata
    except FileNotFoundError:
        saved = {}
    # Empty full-size tensors for the weights only, which the load fills in place.
    weights = {key.removeprefix("state_dict."): torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in saved.items() if key.startswith("state_dict.") and isinstance(meta, TensorStorageMetadata)}
    if not weights:
        raise UnreadableCheckpointError(f"sharded checkpoint {path} holds no model weights (no state_dict entries)")
    state = {"state_dict": weights}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        load(state, storage_reader=reader, no_dist=True)
    checkpoint["state_dict"] = state["state_dict"]
    return checkpoint


def load_trained_module(path: str | os.PathLike):
    """The EmbeddingModule of a training checkpoint (a file, or a sharded FSDP directory) without its loss, on
    CPU, for export or scoring."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        buffer = io.BytesIO()
        torch.save(read_sharded_checkpoint(path), buffer)
        buffer.seek(0)
        return EmbeddingModule.load_from_checkpoint(buffer, map_location="cpu", loss=None)
    checkpoint_metadata(path)  # names the file when it is truncated or corrupt
    return EmbeddingModule.load_from_checkpoint(str(path), map_location="cpu", loss=None)
