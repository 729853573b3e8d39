"""A full disk, named: which file could not be written, how much it needs and how much is free.

Writers raise errors that name neither (`OSError: [Errno 28] No space left on device` without a file; torch's
`RuntimeError: [enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file write
failed`). The atomic writers of checkpoints, score files and saved Embedders turn them into `DiskFullError`, after
removing their temporary file, so every earlier file is left as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: errno values that mean "no room": a full device, or a full disk quota.
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT)
#: How torch.save reports a failed write (the stream writer hides the errno).
_TORCH_WRITE_FAILED = ("file write failed", "PytorchStreamWriter failed writing")


class DiskFullError(OSError):
    """No room to write `path`: the message names it, the space it needs and the space free."""

    def __init__(self, message: str, path: Path, needed: int | None, free: int | None):
        super().__init__(errno.ENOSPC, message)
        self.message, self.path, self.needed, self.free = message, path, needed, free

    def __str__(self) -> str:
        return self.message


def is_disk_full(err: BaseException) -> bool:
    """Whether `err` is a write that failed for lack of room (or, for torch.save, may have: it hides the errno)."""
    if isinstance(err, DiskFullError):
        return True
    if isinstance(err, OSError) and err.errno in _NO_ROOM:
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED)


def human_bytes(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free space (for this user) on the filesystem holding `path` or its nearest existing parent."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def disk_full_error(path: str | os.PathLike, needed: int | None, err: BaseException, what: str = "file") -> DiskFullError:
    """The DiskFullError for a failed write of `what` to `path` that needed about `needed` bytes."""
    path = Path(path)
    free = free_bytes(path.parent)
    cause = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    space = []
    if needed is not None:
        space.append(f"it needs about {human_bytes(needed)}")
    if free is not None:
        space.append(f"{human_bytes(free)} is free in {path.parent}")
    short = needed - free if needed is not None and free is not None else None
    if short is not None and short > 0:
        todo = f"free at least {human_bytes(short)} there"
    elif short is not None:
        todo = "free some space there (a disk quota or another process may have filled it while this ran)"
    else:
        todo = "free some space there"
    message = (f"disk full while writing the {what} {path} ({'; '.join(space) or 'free space unknown'}; {cause}). "
               f"{todo[0].upper() + todo[1:]}, or write to another disk; the files written before are intact (this write went "
               "to a temporary file, now removed)")
    return DiskFullError(message, path, needed, free)
