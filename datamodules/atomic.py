"""Atomic replacement of generated files and directory trees (bundled data, mined datasets, cluster files,
checkpoints), with the permissions an ordinary write would give.

Temporary files and directories (`tempfile.mkstemp`/`mkdtemp`) are created mode 0600/0700; renamed into
place as they are, shared outputs would be unreadable to the rest of a group. `respect_umask` gives them
the mode `open()`/`mkdir()` would have given under the process umask.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask sets it to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def respect_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give `path` the mode a plain `open()` (0o666) or `mkdir()` (0o777) would have under the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def swap_in_directory(built: Path, target: Path) -> None:
    """Move the finished tree `built` to `target` (same filesystem), replacing an earlier tree there.
    Readers see either the old tree or the new one, never a half-written mixture."""
    respect_umask(built, directory=True)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / "tree")
        os.replace(built, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, target)
