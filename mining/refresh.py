"""Self-aware SaHa refresh: re-mine the SaHa clusters with the model being trained, every N epochs.

Offline clusters come from the zero-shot model; as training goes on, the model's own notion of "hard"
moves. `SaHaRefresh` re-clusters the training rows with the current embedder at the end of every N-th
epoch and the next epoch's `SaHaBatchSampler` reads the new clusters.

Mechanics (DDP-safe and resumable):
- every rank encodes a shard of the running sampler's rows (the sampler holds all ranks' rows); rank 0
  gathers the embeddings, clusters every subset and writes the cluster files into `<out_dir>/epoch<E>/`
  (E = the first epoch that uses them) through a temporary directory renamed into place, so a crash never
  leaves a half-written set; the other ranks wait on a barrier;
- the callback sets `trainer.reload_dataloaders_every_n_epochs = every_n_epochs`, so Lightning rebuilds
  the train dataloader at epoch E (and so counts the new epoch's batches) and the DataModule builds a
  new sampler; the callback wraps the DataModule's sampler factory so that a sampler built at epoch e
  reads the newest `<out_dir>/epoch<E>` with E ≤ e (the offline `clusters_dir` before the first refresh),
  as rank 0 lists it: rank 0 picks, every rank uses its choice (`agreed_clusters_dir`).
  A run resumed from a checkpoint therefore finds the same clusters the uninterrupted run used.

Rows held out for validation are not mined (they are not in the sampler), so the refreshed files leave
them out from the start instead of dropping them when loading. The clustering runs on rank 0 only: the
other ranks idle for its duration (seconds for 100K rows; see `make bench`). Under FSDP the encoding runs
through the sharded embedder's own forward, every rank running as many batches (`evaluation.encoding`).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

import lightning as L

from datamodules.samplers import SaHaBatchSampler
from operations.atomic import respect_umask

from .saha_mining import mine_saha

log = logging.getLogger(__name__)

_EPOCH_DIR = re.compile(r"^epoch(\d+)$")


class SaHaRefresh(L.Callback):
    def __init__(self, out_dir: str, every_n_epochs: int = 1, k: int = 15, pool_mult: int = 3, index: str = "flat",
                 nprobe: int = 32, classification_subsets: Collection[str] | None = None, batch_size: int = 64,
                 num_workers: int = 0, progress: bool = False, visibility_timeout_s: float = 120.0):
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"callbacks.saha_refresh.every_n_epochs must be a positive integer, got {every_n_epochs!r}")
        self.out_dir = Path(out_dir)
        self.every_n_epochs = every_n_epochs
        self.mining = {"k": k, "pool_mult": pool_mult, "index": index, "nprobe": nprobe,
                       "classification_subsets": classification_subsets, "batch_size": batch_size,
                       "num_workers": num_workers, "progress": progress}
        self.visibility_timeout_s = float(visibility_timeout_s)
        self.sampler: SaHaBatchSampler | None = None
        self._trainer: L.Trainer | None = None

    # ---------------------------------------------------------------- which clusters a sampler reads
    def clusters_dir_for(self, epoch: int) -> Path | None:
        """The newest refreshed cluster directory meant for an epoch ≤ `epoch`, or None (use the offline one)."""
        if not self.out_dir.is_dir():
            return None
        found = [(int(m.group(1)), p) for p in self.out_dir.iterdir() if p.is_dir() and (m := _EPOCH_DIR.match(p.name))]
        found = [(e, p) for e, p in found if e <= epoch]
        return max(found)[1] if found else None

    def agreed_clusters_dir(self, epoch: int) -> Path | None:
        """`clusters_dir_for(epoch)` as rank 0 sees it, on every rank (collective: every rank builds its sampler
        at the same epoch). Ranks listing the directory themselves could disagree — a network file system shows a
        renamed directory to other nodes late — and build different batch counts, which hangs the run. A rank that
        does not see rank 0's choice yet waits for it (`visibility_timeout_s`), then stops with its path."""
        trainer = self._trainer
        distributed = trainer is not None and trainer.world_size > 1
        choice = self.clusters_dir_for(epoch) if not distributed or trainer.is_global_zero else None
        if distributed:
            shared = trainer.strategy.broadcast(None if choice is None else str(choice), src=0)
            choice = None if shared is None else Path(shared)
        if choice is not None:
            deadline = time.monotonic() + self.visibility_timeout_s
            while not choice.is_dir():
                if time.monotonic() > deadline:
                    raise FileNotFoundError(
                        f"rank 0 chose the refreshed SaHa clusters {choice} for epoch {epoch}, but this rank does not "
                        f"see that directory after {self.visibility_timeout_s:g} s: out_dir must be on a file system "
                        "every node shares (callbacks.saha_refresh.out_dir)")
                time.sleep(0.2)
        return choice

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "sampler_factory"):
            raise TypeError("callbacks.saha_refresh needs the MMEB DataModule (trainer.fit(..., datamodule=…))")
        self._trainer = trainer
        if getattr(datamodule.sampler_factory, "_saha_refresh", None) is None:
            original = datamodule.sampler_factory

            def factory(**kwargs):
                epoch = self._trainer.current_epoch if self._trainer is not None else 0
                refreshed = self.agreed_clusters_dir(epoch)
                if refreshed is not None:
                    kwargs["clusters_dir"] = str(refreshed)
                sampler = original(**kwargs)
                if not isinstance(sampler, SaHaBatchSampler):
                    raise TypeError(f"callbacks.saha_refresh needs sampler=saha, got {type(sampler).__name__}")
                self.sampler = sampler
                return sampler

            factory._saha_refresh = self
            datamodule.sampler_factory = factory
        current = trainer.reload_dataloaders_every_n_epochs
        if current and current != self.every_n_epochs:
            log.warning("callbacks.saha_refresh sets trainer.reload_dataloaders_every_n_epochs=%d (was %d): the "
                        "dataloader must be rebuilt when the clusters change", self.every_n_epochs, current)
        trainer.reload_dataloaders_every_n_epochs = self.every_n_epochs

    # ---------------------------------------------------------------- refresh
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        next_epoch = trainer.current_epoch + 1
        if next_epoch % self.every_n_epochs:
            return
        last_epoch = trainer.max_epochs is not None and trainer.max_epochs >= 0 and next_epoch >= trainer.max_epochs
        if last_epoch or (trainer.max_steps >= 0 and trainer.global_step >= trainer.max_steps):
            return  # no epoch left to use the clusters
        if self.sampler is None:
            raise RuntimeError("callbacks.saha_refresh: no SaHa sampler was built (is sampler=saha set?)")
        target = self.out_dir / f"epoch{next_epoch:04d}"
        self._mine(trainer, pl_module, target, next_epoch)
        trainer.strategy.barrier("saha_refresh")

    def _mine(self, trainer: L.Trainer, pl_module, target: Path, epoch: int) -> None:
        sampler = self.sampler
        subsets: dict[str, list] = {}
        for pair in sampler.pairs:
            subsets.setdefault(pair.subset, []).append(pair)
        kwargs = dict(embedder_description={"kind": "training", "epoch": epoch, "global_step": trainer.global_step},
                      force=True, distributed=trainer.world_size > 1, **self.mining)
        image_loader = trainer.datamodule.image_loader
        if not trainer.is_global_zero:  # encode this rank's shard; rank 0 clusters and writes
            mine_saha(pl_module.embedder, subsets, sampler.subset_info, image_loader, target, **kwargs)
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=self.out_dir))
        try:
            summary = mine_saha(pl_module.embedder, subsets, sampler.subset_info, image_loader, building, **kwargs)
            if target.exists():  # a rerun of this refresh after a crash: replace it whole
                shutil.rmtree(target)
            respect_umask(building, directory=True)
            os.replace(building, target)
        finally:
            if building.exists():
                shutil.rmtree(building, ignore_errors=True)
        log.info("SaHa refresh for epoch %d: %s", epoch,
                 {row["subset"]: row.get("clusters") for row in summary})
