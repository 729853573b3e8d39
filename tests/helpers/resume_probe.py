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
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {float(loss):.10g}\n")
            f.flush()
            os.fsync(f.fileno())


class KillAt(L.Callback):
    """SIGKILL the process when `step` optimizer steps are done (no cleanup, like a preemption)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class StepTrace(L.Callback):
    """Debug aid: appends step, first row ids, RNG digest and a parameter checksum before each step."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        import hashlib

        import torch

        rng = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[:12]
        params = float(sum(p.double().sum() for p in pl_module.parameters()))
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        digest = sum(float(v.double().sum()) for side in ("query", "target") for c in batch[side]
                     for v in c.values() if hasattr(v, "double"))
        opt_state = sum(float(t.double().sum()) for st in trainer.optimizers[0].state.values()
                        for t in st.values() if hasattr(t, "double"))
        sched = trainer.lr_scheduler_configs[0].scheduler.last_epoch if trainer.lr_scheduler_configs else None
        with open(self.path, "a") as f:
            f.write(f"{trainer.global_step} {batch['ids'][:2]} rng={rng} params={params:.10g} lr={lr:.6g} "
                    f"sched={sched} batch={digest:.8g} opt={opt_state:.8g}\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        with open(self.path, "a") as f:
            f.write(f"   loss={float(loss):.8g}\n")
