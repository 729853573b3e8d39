"""One run directory, one live run: an exclusive lock file naming the holder (PID, host, start time,
command). A second run in the same directory is refused with the holder's name; a lock left by a dead
process is taken over with a warning.

The lock is an `fcntl.flock` on `<run dir>/run.lock`, held for the life of the process: the kernel (or the
NFS lock manager) releases it when the holder dies, however it dies, so a stale lock is recognised without
guessing. The file's content says who holds it. Where the filesystem refuses flock, the holder's liveness
is checked by PID on this host; a lock from another host is then refused with what to delete.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"PID {holder.get('pid')} on host {holder.get('host')} (started {holder.get('started')}: "
            f"{holder.get('command', '?')})")


class RunLock:
    """`with RunLock(run_dir): …` — or acquire()/release(). Re-entrant within one process."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def _read_holder(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)[:500]}
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                holder = self._read_holder()
                raise RunLockedError(
                    f"run directory {self.path.parent} is in use by another run: {_describe(holder)}. Wait for it "
                    "to finish or stop it (its checkpoint lets you resume), or start this run in another directory"
                ) from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            # No flock on this filesystem: judge the recorded holder by its PID.
            holder = self._read_holder()
            if holder and holder.get("pid") != os.getpid():
                same_host = holder.get("host") == socket.gethostname()
                if not same_host:
                    os.close(fd)
                    raise RunLockedError(
                        f"run directory {self.path.parent} is locked by {_describe(holder)}, and this filesystem "
                        f"offers no lock to tell whether it is still alive. If that run is gone, delete {self.path}"
                    ) from None
                if _pid_alive(int(holder.get("pid", -1))):
                    os.close(fd)
                    raise RunLockedError(f"run directory {self.path.parent} is in use by another run: "
                                         f"{_describe(holder)}") from None
        holder = self._read_holder()
        if holder and holder.get("pid") != os.getpid():
            log.warning("run directory %s: taking over the lock left by %s, which is no longer running",
                        self.path.parent, _describe(holder))
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # an empty lock file: nobody holds it
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
