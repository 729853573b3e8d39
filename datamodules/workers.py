"""DataLoader workers that stop delivering: how a time-out is recognised and how the loader's workers are stopped
after it. Training and evaluation both start worker processes by forking, and a child forked from a process that
has threads (gloo, the queue feeders of an earlier loader) can deadlock in CPython's after-fork clean-up before it
runs any code (seen under `trainer=ddp_cpu` on Python 3.11). Such a child stays alive, so a DataLoader without a
time-out waits for it forever, and a shutdown that only asks it to stop waits for it again at exit."""

from __future__ import annotations

from torch.utils.data._utils import signal_handling
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

#: How torch's DataLoader words the error it raises when no batch came within its `timeout`.
TIMED_OUT = "DataLoader timed out after"


def is_worker_timeout(err: BaseException) -> bool:
    """Torch's own time-out, not a worker's error that happens to mention one (that one is the user's to see)."""
    return isinstance(err, RuntimeError) and str(err).startswith(TIMED_OUT)


def stop_workers(iterator) -> None:
    """Stop the workers of a DataLoader iterator for good, without waiting for them: torch stops watching their
    exits first (a worker killed while it watches raises "worker killed by signal" in this process), every live
    worker is killed (a child stuck before running Python code may ignore SIGTERM, and torch's own shutdown would wait
    seconds for it), then torch shuts the rest down (queues, pin-memory thread)."""
    if iterator is not None and not isinstance(iterator, _MultiProcessingDataLoaderIter):
        iterator = getattr(iterator, "_iterator", None)   # a wrapper around torch's iterator: stop torch's
    if iterator is None:
        return
    if getattr(iterator, "_worker_pids_set", False):
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    for worker in getattr(iterator, "_workers", None) or ():
        if worker.is_alive():
            worker.kill()
            worker.join(timeout=10)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
