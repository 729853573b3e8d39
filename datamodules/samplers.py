"""Batch samplers: which rows form each device batch, on every rank, epoch after epoch.

Every sampler builds the epoch's *global* list of device batches from (seed, epoch) alone, then
rank r takes batches r, r+W, r+2W, … so ranks never share a row and always run the same number
of steps (a trailing batch that cannot be given to every rank is dropped and logged: unequal
step counts hang DDP). A sampler resumes mid-epoch by skipping the batches already consumed
(`resume`), which makes a restarted run see exactly the batches the uninterrupted run would.
Samplers are chosen with `sampler=…` and built by the DataModule with `build(...)`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

log = logging.getLogger(__name__)


class EpochBatchSampler:
    """Base class: subclasses implement `epoch_batches(epoch) -> list[list[int]]` (global order)."""

    def __init__(self, pairs: Sequence, batch_size: int, seed: int = 0, drop_last: bool = True,
                 rank: int = 0, world_size: int = 1, subset_info: dict | None = None):
        """`pairs`: the training rows (TrainPair objects; subclasses may read their subset/row).
        `subset_info`: per subset {"num_rows", "fingerprint", "split", "source"} of the data as read,
        for samplers that must check files mined from the same data."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        num_items = len(pairs)
        if num_items < 1:
            raise ValueError("the sampler got an empty dataset")
        self.pairs = pairs
        self.subset_info = dict(subset_info or {})
        self.num_items, self.batch_size, self.seed, self.drop_last = int(num_items), int(batch_size), int(seed), drop_last
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch = 0
        self._resume_epoch: int | None = None
        self._resume_skip = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    # -- subclass API
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        raise NotImplementedError

    # -- shared machinery
    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def set_distributed(self, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _global(self, epoch: int) -> list[list[int]]:
        if self._cache is None or self._cache[0] != epoch:
            batches = self.epoch_batches(epoch)
            usable = len(batches) - len(batches) % self.world_size
            if usable < len(batches):
                dropped = sum(len(b) for b in batches[usable:])
                log.info("epoch %d: %d trailing batch(es) (%d rows) cannot be spread over %d ranks and are "
                         "skipped this epoch", epoch, len(batches) - usable, dropped, self.world_size)
            self._cache = (epoch, batches[:usable])
        return self._cache[1]

    def local_batches(self, epoch: int) -> list[list[int]]:
        return self._global(epoch)[self.rank :: self.world_size]

    def resume(self, epoch: int, consumed: int) -> None:
        """Skip the first `consumed` local batches of `epoch` (they were trained before a restart)."""
        self._resume_epoch, self._resume_skip = int(epoch), int(consumed)

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.local_batches(self.epoch)
        skip = 0
        if self._resume_epoch == self.epoch:
            skip = self._resume_skip
            self._resume_epoch, self._resume_skip = None, 0
        yield from batches[skip:]

    def __len__(self) -> int:
        # The full epoch's count even when resuming: Lightning adds the batches it already saw.
        return len(self.local_batches(self.epoch))

    def _chunk(self, order: Sequence[int]) -> list[list[int]]:
        order = list(order)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches


class RandomBatchSampler(EpochBatchSampler):
    """Uniformly shuffled rows, reshuffled every epoch."""

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return self._chunk(self.rng(epoch).permutation(self.num_items).tolist())


class SequentialBatchSampler(EpochBatchSampler):
    """Rows in order (validation): no shuffling, partial last batch kept, spread over ranks."""

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1):
        super().__init__(range(num_items), batch_size, seed=0, drop_last=False, rank=rank, world_size=world_size)

    def _global(self, epoch: int) -> list[list[int]]:
        # Validation must see every row: give the trailing batches to the first ranks instead of dropping.
        return self._chunk(range(self.num_items))
