"""A training progress bar that counts what a step-based run counts: optimizer steps out of
`trainer.max_steps` (Lightning's bar counts batches of the current epoch against `max_epochs - 1`, which
reads "Epoch 0/-2" and, after a resume, "40/20" for step-based runs). Epoch-based runs keep Lightning's bar.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE


def _step_based(trainer) -> bool:
    return trainer.max_steps is not None and trainer.max_steps > 0


class _StepCounting:
    """Mixin: total = max_steps, position = global_step, description "Step (epoch e)". The logged metrics (the loss)
    are read at most once per `metrics_interval_s` and at the last step: reading a metric copies it to the host,
    which waits for the device, so reading it at every step would drain the GPU's queue every step."""

    metrics_interval_s: float = 1.0
    _metrics_read_at: float = float("-inf")

    def _metrics_due(self, trainer) -> bool:
        now = time.monotonic()
        last = _step_based(trainer) and trainer.global_step >= trainer.max_steps
        if last or now - self._metrics_read_at >= self.metrics_interval_s:
            self._metrics_read_at = now
            return True
        return False

    @property
    def total_train_batches(self):
        if _step_based(self.trainer):
            return self.trainer.max_steps
        return super().total_train_batches

    def _position(self, trainer, batch_idx: int) -> int:
        return trainer.global_step if _step_based(trainer) else batch_idx + 1

    def _train_description(self, trainer) -> str:
        if _step_based(trainer):
            return f"Step (epoch {trainer.current_epoch})"
        return f"Epoch {trainer.current_epoch}" + (f"/{trainer.max_epochs - 1}" if trainer.max_epochs and
                                                   trainer.max_epochs > 0 else "")


class RichStepProgressBar(_StepCounting, RichProgressBar):
    def _get_train_description(self, current_epoch: int) -> str:
        description = self._train_description(self.trainer)
        return f"{description:{len(self.validation_description)}}"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        if _step_based(trainer):
            self._update(self.train_progress_bar_id, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, self._position(trainer, batch_idx))
        if self._metrics_due(trainer):
            self._update_metrics(trainer, pl_module)
        self.refresh()


class TQDMStepProgressBar(_StepCounting, TQDMProgressBar):
    def on_train_epoch_start(self, trainer, *_) -> None:
        super().on_train_epoch_start(trainer)
        self.train_progress_bar.set_description(self._train_description(trainer))
        if _step_based(trainer):
            _update_n(self.train_progress_bar, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self._position(trainer, batch_idx)
        if self.train_progress_bar is not None and self._should_update(n, self.train_progress_bar.total):
            _update_n(self.train_progress_bar, n)
            if self._metrics_due(trainer):
                self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))


def step_progress_bar():
    """The Rich bar when `rich` is installed (Lightning's own default then), else the tqdm one."""
    return RichStepProgressBar() if _RICH_AVAILABLE else TQDMStepProgressBar()
