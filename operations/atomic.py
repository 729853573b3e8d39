"""Atomic replacement of generated files and directory trees (bundled data, mined datasets, cluster files,
checkpoints), with the permissions an ordinary write would give.

Temporary files and directories (`tempfile.mkstemp`/`mkdtemp`) are created mode 0600/0700; renamed into
place as they are, shared outputs would be unreadable to the rest of a group. `respect_umask` gives them
the mode `open()`/`mkdir()` would have given under the process umask.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
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


def build_directory(root: Path, is_complete: Callable[[], bool], build: Callable[[Path], object], marker: str,
                    what: str) -> bool:
    """Build a generated directory tree at `root` once, safely among concurrent processes: under an exclusive
    flock on `<root>.lock`, unless `is_complete()` (another process finished the same build meanwhile), refuse a
    `root` that is not a directory or holds files without the `marker` file (not ours to replace), remove the
    leftovers of crashed builds, run `build(tmp)` in a temporary sibling and swap the result in. A `build` that
    raises leaves `root` as it was. Returns whether it built."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(str(root) + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete():
                return False
            if root.exists() and not root.is_dir():
                raise FileExistsError(f"{root} exists and is not a directory; point the {what} root elsewhere")
            if root.is_dir() and any(root.iterdir()) and not (root / marker).exists():
                raise FileExistsError(f"{root} is not empty and holds no {marker}, so it is not a {what}; refusing "
                                      "to replace it. Point `root` at an empty or new directory, or delete it.")
            # Leftovers of builds that crashed are safe to delete: we hold the lock.
            for stale in (*root.parent.glob(f".{root.name}.building-*"), *root.parent.glob(f".{root.name}.old-*")):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.building-", dir=root.parent))
            try:
                build(tmp)
                swap_in_directory(tmp, root)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return True
