"""DataLoader workers that stop delivering: how a time-out is recognised and how the loader's workers are stopped
after it. Training and evaluation both start worker processes by forking, and a child forked from a process that
has threads (gloo, the queue feeders of an earlier loader) can deadlock in CPython's after-fork clean-up before it
runs any code (seen under `trainer=ddp_cpu` on Python 3.11). Such a child stays alive, so a DataLoader without a
time-out waits for it forever, and a shutdown that only asks it to stop waits for it again at exit."""

from __future__ import annotations

#: How torch's DataLoader words the error it raises when no batch came within its `timeout`.
TIMED_OUT = "DataLoader timed out after"


def is_worker_timeout(err: BaseException) -> bool:
    """Torch's own time-out, not a worker's error that happens to mention one (that one is the user's to see)."""
    return isinstance(err, RuntimeError) and str(err).startswith(TIMED_OUT)


def stop_workers(iterator) -> None:
    """Stop the workers of a DataLoader iterator for good: torch's own shutdown first (it stops watching the workers'
    exits, so a kill while it watches does not raise "worker killed by signal", and sends SIGTERM), then whatever is
    still alive is killed: a child stuck before running Python code may have inherited a SIGTERM handler that never
    runs."""
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    for worker in getattr(iterator, "_workers", ()):
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=10)
