"""Callbacks injected into train.py subprocesses by the fault-injection tests (on PYTHONPATH there):
signal the process itself at a given step, as a scheduler or a user would."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class SignalAt(L.Callback):
    """Send `signal` to this process once `step` optimizer steps are done (once per run directory: a marker
    file keeps a resumed or requeued attempt from signalling again)."""

    def __init__(self, step: int, signal: str = "SIGTERM", marker: str | None = None, times: int = 1,
                 rank: int | None = None, group: bool = False):
        self.step, self.signum, self.marker, self.times = step, getattr(signal_module, signal), marker, times
        self.rank = rank  # only this rank is signalled (None: every rank), as `kill <pid of rank 0>` would
        self.group = group  # the whole process group (DataLoader workers too), as Ctrl-C in a terminal does

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step or (self.rank is not None and trainer.global_rank != self.rank):
            return
        if self.marker:
            if Path(self.marker).exists():
                return
            Path(self.marker).write_text("sent\n")
        for _ in range(self.times):
            if self.group:
                os.killpg(os.getpgrp(), self.signum)
            else:
                os.kill(os.getpid(), self.signum)


signal_module = signal


class StuckWorkers(L.Callback):
    """Make this rank's training DataLoader workers never deliver, as a child deadlocked in CPython's after-fork
    clean-up would (SIGTERM does not end them either), and shorten this rank's time-out, so a test sees the stop in
    seconds. Patched in `setup`, before the loaders exist and their workers are forked."""

    def __init__(self, rank: int = 0, timeout_s: float = 5.0):
        self.rank, self.timeout_s = rank, timeout_s

    def setup(self, trainer, pl_module, stage):
        import time

        import torch

        from datamodules import datamodule

        if trainer.global_rank != self.rank:   # the other ranks keep data.worker_timeout_s (600 s): they must be
            return                              # stopped by the stuck rank's failure, not by their own time-out
        trainer.datamodule.worker_timeout_s = self.timeout_s
        real = datamodule.PairDataset.__getitem__

        def stuck(dataset, i):
            if torch.utils.data.get_worker_info() is not None:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(3600)
            return real(dataset, i)

        datamodule.PairDataset.__getitem__ = stuck
