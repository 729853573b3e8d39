"""Callbacks for the resume tests: record every step's loss, and kill the process abruptly."""

from __future__ import annotations

import os
import signal

import lightning as L


class LossRecorder(L.Callback):
    """Appends "<global step> <loss>" after every training step, flushed (survives SIGKILL)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        path = self.path if trainer.world_size == 1 else f"{self.path}.rank{trainer.global_rank}"
        with open(path, "a") as f:
            f.write(f"{trainer.global_step} {float(loss):.10g}\n")
            f.flush()
            os.fsync(f.fileno())


class KillAt(L.Callback):
    """SIGKILL the process when `step` optimizer steps are done (no cleanup, like a preemption). With `marker`,
    each rank does so once (a resume runs the run's recorded config, this callback included)."""

    def __init__(self, step: int, pid_dir: str | None = None, marker: str | None = None):
        self.step = step
        self.pid_dir = pid_dir
        self.marker = marker

    def on_train_start(self, trainer, pl_module):
        if self.pid_dir:  # so that a test can wait for every rank to be gone
            with open(os.path.join(self.pid_dir, f"pid.rank{trainer.global_rank}"), "w") as f:
                f.write(str(os.getpid()))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.marker:
                marker = f"{self.marker}.rank{trainer.global_rank}"
                if os.path.exists(marker):
                    return
                open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)



class ChunkRecorder(L.Callback):
    """Appends "<step> <query chunks> <largest padded tokens of a query chunk> <rows in it>" per training step: what
    a token budget did to the GradCache chunks of each batch."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        chunks = batch["query"]
        largest = max(chunks, key=lambda c: c["attention_mask"].numel())
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step + 1} {len(chunks)} {largest['attention_mask'].numel()} "
                    f"{largest['attention_mask'].shape[0]}\n")
