"""Stopping a training run on a signal without losing work.

SIGTERM (a scheduler, `kill`) and the first Ctrl-C (SIGINT) during training finish the current optimizer
step, save an atomic checkpoint at that step (`<checkpoints>/last.ckpt`), print the resume command and exit
non-zero (128 + signal number: 143 for SIGTERM, 130 for SIGINT). A second Ctrl-C stops at once, without
saving. Outside training (data setup, the untrained or final evaluation) there is no training state to
save: the run stops at once with the same message and exit code.

The step is finished, not cut: the handler only records the request. After every training step (at
`on_train_batch_end`, where Lightning's periodic checkpoints are saved, so a resume restarts exactly there)
the callback looks at it; under DDP the ranks first agree with one 1-element all-reduce (MAX), so every rank
stops after the same step and they save together, whichever rank was signalled. The fit then ends before
the next batch, once Lightning has logged the step's metrics. (Lightning's own SIGTERM
flag is not used: under DDP its rank 0 stops one collective earlier than the others and the save hangs.)

SLURM through submitit: submitit owns requeue through its SIGUSR2 handler (sent `signal_delay_s` before the
time limit, or on preemption). When such a handler is installed, SIGUSR2 during training is deferred the
same way — finish the step, save the checkpoint — and then handed to submitit's handler, which requeues the
job; the requeued job resumes from that checkpoint (`ckpt_path=auto`). Outside training it goes to
submitit's handler at once. submitit's own SIGTERM bypass is replaced during the run: a SIGTERM (scancel,
preemption without USR2) now saves and exits non-zero instead of being ignored.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Raised inside the fit after the stop checkpoint is saved, to end it (every rank at the same step)."""


class RunInterrupted(Exception):
    """The run stopped on a signal; `exit_code` = 128 + the signal number, `message` says what was kept."""

    def __init__(self, signum: int | None, message: str):
        super().__init__(message)
        self.signum = signum
        self.message = message
        self.exit_code = 128 + (signum or signal.SIGTERM)


def _name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "a stop request from another rank"


class GracefulStop:
    """Owns SIGINT and SIGTERM (and wraps an installed SIGUSR2 requeue handler) for one training run.

    Use as a context manager around the run; add `callback()` to the Trainer's callbacks; when `fit` raised
    StopRequested, call `interrupted()` for the exception to raise.
    """

    def __init__(self, resume_command: str):
        self.resume_command = resume_command
        self.signum: int | None = None
        self.phase = "before training"
        self.trainer: L.Trainer | None = None
        self.saved: tuple[Path, int] | None = None
        self._previous: dict[int, object] = {}
        self._requeue_handler = None
        self.owns_signals = False
        self._pid = os.getpid()

    # ------------------------------------------------------------------ handlers
    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be installed from the main thread
        self.owns_signals = True
        self._pid = os.getpid()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        usr2 = signal.getsignal(signal.SIGUSR2)
        if callable(usr2):  # submitit's checkpoint-and-requeue handler
            self._previous[signal.SIGUSR2] = usr2
            self._requeue_handler = usr2
            signal.signal(signal.SIGUSR2, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        self.owns_signals = False

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:
            # A forked DataLoader worker inherited this handler. Ctrl-C reaches the whole process group: the
            # worker ignores it and keeps feeding the step being finished; anything else gets its default.
            if signum != signal.SIGINT:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, without saving
            return  # a repeated stop request: the first one is being carried out
        self.signum = signum
        if self.phase != "training":
            if signum == signal.SIGUSR2 and self._requeue_handler is not None:
                self._requeue_handler(signum, frame)  # submitit: requeue (and exit) now
                return
            raise RunInterrupted(signum, self._message())
        extra = " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else ""
        print(f"\nreceived {_name(signum)}: finishing step {self.trainer.global_step + 1}, then saving a "
              f"checkpoint{extra}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ the run's side
    def callback(self) -> L.Callback:
        return _SaveOnStop(self)

    def _message(self) -> str:
        if self.saved is not None:
            path, step = self.saved
            what = f"at step {step}: checkpoint saved to {path}"
        elif self.phase == "before training":
            what = "before training started: nothing to save (the run's checkpoints are as they were)"
        elif self.phase == "after training":
            what = "after training, during the final saving or scoring: the final checkpoint is kept"
        else:
            what = "during training, before a checkpoint could be saved"
        return f"Stopped by {_name(self.signum)} {what}. Resume with:\n  {self.resume_command}"

    def interrupted(self) -> RunInterrupted:
        """After the fit stopped on our request: hand a SIGUSR2 to submitit (requeue), else the exception to
        raise."""
        message = self._message()
        log.error(message)
        if self.signum == signal.SIGUSR2 and self._requeue_handler is not None:
            self._requeue_handler(self.signum, None)  # requeues and exits on rank 0; returns on other ranks
        return RunInterrupted(self.signum, message)


class _SaveOnStop(L.Callback):
    """Saves `last.ckpt` at the current step when the fit stops on a signal, and at the end of training
    when the last periodic checkpoint is older than the final step (a finished run resumes as finished) unless
    the run saves no checkpoints (callbacks.model_checkpoint=null)."""

    def __init__(self, stop: GracefulStop):
        self.stop = stop
        self.last_saved_step: int | None = None
        self._host_group = None  # the process group that agrees on a stop (on_train_start; None: one process)

    def _path(self, trainer: L.Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        directory = getattr(ckpt, "dirpath", None) or os.path.join(trainer.default_root_dir, "checkpoints")
        return Path(directory) / "last.ckpt"

    def on_train_start(self, trainer, pl_module) -> None:
        self.stop.trainer = trainer
        self.stop.phase = "training"
        dist = torch.distributed
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            # Every rank runs this hook: a new group is a collective, created here once per fit.
            default_gloo = dist.get_backend() == "gloo"
            self._host_group = dist.group.WORLD if default_gloo else dist.new_group(backend="gloo")
        if self.stop.owns_signals:
            # Lightning installed its own SIGTERM handler for the fit (ours is restored when the fit ends).
            # Ours replaces it: Lightning's stop flag stops rank 0 one collective before the other ranks.
            signal.signal(signal.SIGTERM, self.stop._handle)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.last_saved_step = trainer.global_step
        # Loggers buffer rows (the CSV logger for 100 steps): write them out with every checkpoint, so that
        # after a kill the metrics file holds every step up to the checkpoint the run resumes from.
        for lg in trainer.loggers:
            lg.save()

    def _requested(self, trainer) -> bool:
        """Whether any rank was asked to stop: one 1-element all-reduce of a host tensor over a gloo group (the
        default group itself when it is gloo), so the question never waits for the device; nothing on one
        process."""
        requested = self.stop.signum is not None
        if self._host_group is not None:
            flag = torch.tensor([int(requested)])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=self._host_group)
            requested = bool(flag.item())
        return requested

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stop.phase != "training" or not self._requested(trainer):
            return
        path = self._path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # collective; rank 0 writes it, atomically
        self.stop.saved = (path, trainer.global_step)
        self.stop.phase = "stopped"
        # The fit ends at the next batch (or at its end): Lightning logs this step's metrics after this hook.

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.stop.phase == "stopped":
            raise StopRequested(f"stop requested, checkpoint saved at step {self.stop.saved[1]}")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.stop.phase == "stopped":  # the stop came at the last step
            raise StopRequested(f"stop requested, checkpoint saved at step {self.stop.saved[1]}")
        self.stop.phase = "after training"
        if trainer.checkpoint_callback is None:  # callbacks.model_checkpoint=null: only a signal's stop saves one
            return
        if trainer.global_step > 0 and self.last_saved_step != trainer.global_step:
            trainer.save_checkpoint(self._path(trainer), weights_only=False)
