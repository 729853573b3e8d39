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
