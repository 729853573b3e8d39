"""Lightning callbacks that report what the evaluation side measures during training."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from embedders.diagnostics import plot_similarity_histogram

log = logging.getLogger(__name__)


class SimilarityDiagnostics(L.Callback):
    """After each validation: positive/negative cosine histograms to W&B, and a PNG per step on disk."""

    def __init__(self, output_dir: str | None = None, png: bool = True):
        self.output_dir = Path(output_dir) if output_dir else None
        self.png = png

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sims = getattr(pl_module, "last_similarity", None)
        if not sims or trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        pos, neg = sims["positive"], sims["negative"]
        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                import wandb

                lg.experiment.log({"val/sim_positive": wandb.Histogram(pos.numpy()),
                                   "val/sim_negative": wandb.Histogram(neg.numpy()),
                                   "trainer/global_step": step})
        if self.png and self.output_dir is not None:
            path = plot_similarity_histogram(pos, neg, self.output_dir / f"similarity_step{step:06d}.png",
                                             title=f"step {step}")
            log.info("similarity histogram: %s (overlap %.3f)", path, sims.get("sim_overlap", float("nan")))


class Throughput(L.Callback):
    """Logs step time, pairs/s and tokens/s (all ranks together) every training step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._t0
        world = trainer.world_size
        # A tensor, never read here: int() would make the host wait for the device every step; Lightning reads
        # logged tensors only when it writes the logs.
        tokens = sum(c["attention_mask"].sum() for side in ("query", "target") for c in batch[side]
                     if "attention_mask" in c)
        pl_module.log_dict({"perf/step_s": dt, "perf/pairs_per_s": batch["num_pairs"] * world / dt,
                            "perf/tokens_per_s": tokens * world / dt}, on_step=True, on_epoch=False,
                           batch_size=batch["num_pairs"])
