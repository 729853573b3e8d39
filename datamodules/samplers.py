"""Batch samplers: which rows form each device batch, on every rank, epoch after epoch.

Every sampler builds the epoch's *global* list of device batches from (seed, epoch) alone, then
rank r takes batches r, r+W, r+2W, … so ranks never share a row and always run the same number
of steps (a trailing batch that cannot be given to every rank is dropped and logged: unequal
step counts hang DDP). A sampler resumes mid-epoch by skipping the batches already consumed
(`resume`), which makes a restarted run see exactly the batches the uninterrupted run would.
Samplers are chosen with `sampler=…` and built by the DataModule as
`factory(pairs=, batch_size=, seed=, drop_last=, rank=, world_size=, subset_info=)`:

- `RandomBatchSampler` (`sampler=random`): uniformly shuffled rows.
- `HomogeneousBatchSampler` (`sampler=homogeneous`, METHODS §7, VLM2Vec v2): every sub-batch from one
  subset, subsets drawn with per-subset weights.
- `ModalityBatchSampler` (`sampler=modality`, LLaVE): queries with images and text-only queries in
  separate device batches.
- `SaHaBatchSampler` (`sampler=saha`, METHODS §6): whole SaHa clusters packed into device batches, read
  from the cluster files that `python mine.py` writes. This module also owns that file format
  (`write_cluster_file`, `read_cluster_file`) and the default place mined data lives (`mined_data_dir`).
"""

from __future__ import annotations

import bisect
import datetime
import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from operations.atomic import respect_umask

from .errors import DataError

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
        # Lightning creates the resumed epoch's iterator before it calls set_epoch, and DataLoader
        # workers start pulling batches at once: the sampler must already be on the resumed epoch.
        self.epoch = int(epoch)

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


class ValidationBatchSampler:
    """Validation batches: the single-process batches (consecutive rows, partial last batch kept), spread
    over ranks so that every rank runs the same number of steps.

    Rank r takes global batches r, r+W, r+2W, …; ranks left with fewer batches than the others — or with none,
    when there are fewer batches than ranks — get *padding* batches (one row, flagged) so that every rank runs
    ⌈n_batches / W⌉ steps. The DDP forward wrapper communicates at every step (it broadcasts buffers), so
    unequal step counts would mismatch collectives (an error on gloo, a hang on NCCL), and Lightning refuses a
    rank with an empty validation loader. Each yielded batch is a list of (global batch index, row, is_padding);
    the module skips padding batches, so metrics cover every row exactly once, as in one process.
    """

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if num_items < 1:
            raise ValueError("the validation sampler got an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_items, self.batch_size, self.rank, self.world_size = int(num_items), int(batch_size), rank, world_size

    @property
    def num_global_batches(self) -> int:
        return math.ceil(self.num_items / self.batch_size)

    def __len__(self) -> int:
        return math.ceil(self.num_global_batches / self.world_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, bool]]]:
        for step in range(len(self)):
            b = self.rank + step * self.world_size
            if b < self.num_global_batches:
                rows = range(b * self.batch_size, min((b + 1) * self.batch_size, self.num_items))
                yield [(b, r, False) for r in rows]
            else:
                yield [(-1, 0, True)]


# ------------------------------------------------------------------------------------------------
# Grouped batching: task-homogeneous (VLM2Vec v2) and modality (LLaVE) batches
# ------------------------------------------------------------------------------------------------


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integer counts proportional to `weights` (largest remainders, ties to the first)."""
    weights = np.asarray(weights, dtype=np.float64)
    quotas = total * weights / weights.sum()
    counts = np.floor(quotas).astype(np.int64)
    remainders = quotas - counts
    order = sorted(range(len(weights)), key=lambda i: (-remainders[i], i))
    for i in order[: total - int(counts.sum())]:
        counts[i] += 1
    return counts.tolist()


class GroupedBatchSampler(EpochBatchSampler):
    """Device batches made of sub-batches of `sub_batch_size` rows, each sub-batch from one group.

    Subclasses say which group a row belongs to (`group_of`). Each group's rows are consumed as a stream
    of sub-batches: cycle c of group g is a permutation of its rows seeded by (seed, group, c), cut into
    ⌊n_g / h⌋ whole sub-batches (a sub-batch never straddles two cycles, so it never holds a row twice).
    With `units` (SaHa clusters, `HomogeneousBatchSampler(clusters_dir=…)`) a cycle is instead a packing of
    the group's clusters, whole, into sub-batches of at most h rows (one fixed layout, the clusters of each
    size shuffled into it per cycle), so a cluster never leaves its sub-batch.

    Epoch length. With `weights=None` (proportional to group size) group g contributes exactly its
    ⌊n_g / h⌋ sub-batches of cycle `epoch`: every row is used exactly once per epoch, except the
    n_g mod h rows of each group that do not fill a sub-batch (kept as a short sub-batch when
    `drop_last=False`). With explicit `weights` an epoch has T sub-batches: `sub_batches_per_epoch`, or by
    default the proportional epoch's Σ_g ⌊n_g / h⌋ rounded down to a whole number of global batches
    (sub-batches per device batch × ranks; at least one), so that no drawn sub-batch is dropped and every
    rank runs the same steps; group g gets round(T · w_g / Σw) of them (largest remainders, the same count
    every epoch) and continues its stream where the previous epoch stopped: an up-weighted group cycles
    through its rows more than once per epoch, a down-weighted one sees every row once every few epochs.

    The epoch's sub-batches are shuffled across groups (seeded by (seed, epoch)) and consecutive ones
    form device batches of `batch_size / sub_batch_size` sub-batches; a trailing device batch with
    fewer sub-batches is dropped when `drop_last`. With `modality_of` (a group → modality map) device batches
    are formed within each modality, so a device batch never mixes modalities (a modality's trailing partial
    device batch is dropped when `drop_last`), and the device batches are then shuffled.
    """

    #: What a group is called in messages ("subset", "modality").
    group_kind = "group"

    def __init__(self, pairs: Sequence, batch_size: int, seed: int = 0, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1, subset_info: dict | None = None, *, sub_batch_size: int | None = None,
                 weights: Mapping[str, float] | None = None, sub_batches_per_epoch: int | None = None):
        super().__init__(pairs, batch_size, seed, drop_last, rank, world_size, subset_info)
        self.sub_batch_size = int(sub_batch_size or batch_size)
        if self.sub_batch_size < 1 or self.batch_size % self.sub_batch_size:
            raise ValueError(f"sampler.sub_batch_size={sub_batch_size} must divide data.batch_size={batch_size} "
                             "(a device batch is a whole number of sub-batches)")
        self.sub_batches_per_batch = self.batch_size // self.sub_batch_size
        members: dict[str, list[int]] = {}
        for i, pair in enumerate(pairs):
            members.setdefault(self.group_of(pair), []).append(i)
        self.group_names = sorted(members)  # sorted, so seeds do not depend on row order
        self.group_rows = [np.asarray(members[g], dtype=np.int64) for g in self.group_names]
        h = self.sub_batch_size
        #: Per group: None (rows are drawn one by one) or the packing layout of its clusters (`_PackingLayout`).
        self.layouts: list[_PackingLayout | None] = [self.group_layout(g, rows.tolist())
                                                    for g, rows in zip(self.group_names, self.group_rows)]
        self.full_sub_batches = [len(rows) // h if layout is None else layout.num_bins
                                 for rows, layout in zip(self.group_rows, self.layouts)]
        #: group name -> modality, when device batches must not mix modalities (None: they may).
        self.modality_of: dict[str, str] | None = None
        self.proportional = weights is None
        if self.proportional:
            self.counts = list(self.full_sub_batches)
        else:
            self.weights = self._check_weights(weights)
            for name, full, rows in zip(self.group_names, self.full_sub_batches, self.group_rows):
                if self.weights[name] > 0 and not full:
                    raise ValueError(f"{self.group_kind} {name!r} has {len(rows)} rows, fewer than one sub-batch of "
                                     f"{h}; give it weight 0 or lower sampler.sub_batch_size")
            if sub_batches_per_epoch is None:
                per_step = self.sub_batches_per_batch * self.world_size
                total = max(per_step, sum(self.full_sub_batches) // per_step * per_step)
            else:
                total = int(sub_batches_per_epoch)
            if total < 1:
                raise ValueError(f"sampler.sub_batches_per_epoch must be ≥ 1, got {sub_batches_per_epoch}")
            self.counts = apportion(total, [self.weights[g] for g in self.group_names])
        window = (self.sub_batches_per_batch * self.world_size - 1) * h
        small = [g for g, full, count, layout in zip(self.group_names, self.full_sub_batches, self.counts, self.layouts)
                 if not self.proportional and count > 0 and layout is None and full * h < 4 * window]
        if small:
            log.warning("%s: %s %s too few rows (< %d) to keep a row from repeating within one global batch where "
                        "its stream starts a new cycle; such repeats are masked as identical targets by the loss",
                        type(self).__name__, self.group_kind, small, 4 * window)
        log.info("%s: %s sub-batches of %d rows per epoch (%s), %d per device batch", type(self).__name__,
                 dict(zip(self.group_names, self.counts)), h,
                 "proportional to size" if self.proportional else "weighted", self.sub_batches_per_batch)

    def group_of(self, pair) -> str:
        raise NotImplementedError

    def group_layout(self, group: str, positions: list[int]) -> _PackingLayout | None:
        """How a group's sub-batches are drawn: None = rows one by one; a packing layout = whole clusters."""
        return None

    def _check_weights(self, weights: Mapping[str, float]) -> dict[str, float]:
        weights = {str(k): v for k, v in dict(weights).items()}
        unknown = sorted(set(weights) - set(self.group_names))
        missing = [g for g in self.group_names if g not in weights]
        if unknown or missing:
            raise ValueError(f"sampler.weights must give one weight per {self.group_kind} of the data "
                             f"{self.group_names}; unknown: {unknown}, missing: {missing} (use 0 to leave one out)")
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"sampler.weights.{name} must be a finite number ≥ 0, got {value!r}")
        if sum(weights.values()) <= 0:
            raise ValueError("sampler.weights are all 0: give at least one group a positive weight")
        return {k: float(v) for k, v in weights.items()}

    def _permutation(self, group: int, cycle: int) -> np.ndarray:
        rows = self.group_rows[group]
        return rows[np.random.default_rng([self.seed, group, cycle]).permutation(len(rows))]

    def _cycle(self, group: int, cycle: int) -> np.ndarray:
        """Cycle `cycle` of the group's rows. Weighted epochs draw a group's sub-batches in stream order, so up to
        P = (sub-batches per device batch × ranks) consecutive stream entries can share a global batch; across a
        cycle boundary they could repeat a row there. The first P-1 sub-batches of a cycle are therefore cleared of
        the rows of the previous cycle's last P-1 sub-batches (swapped with rows from the middle of the cycle, so
        no cycle's tail ever changes), whenever the group has the rows to do it."""
        perm = self._permutation(group, cycle)
        h, full = self.sub_batch_size, self.full_sub_batches[group]
        window = (self.sub_batches_per_batch * self.world_size - 1) * h
        if self.proportional or cycle == 0 or window == 0 or full * h < 4 * window:
            return perm
        previous = self._permutation(group, cycle - 1)
        forbidden = set(previous[full * h - window : full * h].tolist())
        partners = [i for i in (*range(window, full * h - window), *range(full * h, len(perm)))
                    if int(perm[i]) not in forbidden]
        perm = perm.copy()
        for i in range(window):
            if int(perm[i]) in forbidden:
                j = partners.pop(0)
                perm[i], perm[j] = perm[j], perm[i]
        return perm

    def _cycle_sub_batches(self, group: int, cycle: int) -> list[np.ndarray]:
        """The whole sub-batches of cycle `cycle` of `group`, in stream order."""
        layout, h = self.layouts[group], self.sub_batch_size
        if layout is None:
            rows = self._cycle(group, cycle)
            return [rows[p * h : (p + 1) * h] for p in range(self.full_sub_batches[group])]
        rng = np.random.default_rng([self.seed, group, cycle])
        bins = layout.fill(rng)
        return [np.asarray(bins[b], dtype=np.int64) for b in rng.permutation(len(bins)).tolist()]

    def _sub_batches(self, group: int, epoch: int) -> list[np.ndarray]:
        """This epoch's sub-batches of `group`: entries epoch·count … epoch·count + count-1 of its stream."""
        h, full, count = self.sub_batch_size, self.full_sub_batches[group], self.counts[group]
        out, cycles = [], {}
        for j in range(epoch * count, (epoch + 1) * count):
            cycle, pos = divmod(j, full)
            if cycle not in cycles:
                cycles[cycle] = self._cycle_sub_batches(group, cycle)
            out.append(cycles[cycle][pos])
        if self.proportional and not self.drop_last and self.layouts[group] is None and len(self.group_rows[group]) % h:
            out.append(self._cycle(group, epoch)[full * h :])  # the rows that do not fill a sub-batch
        return out

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        streams = [self._sub_batches(g, epoch) for g in range(len(self.group_names))]
        labels = np.repeat(np.arange(len(streams)), [len(s) for s in streams])
        rng = self.rng(epoch)
        labels = rng.permutation(labels)
        taken = [0] * len(streams)
        per = self.sub_batches_per_batch
        if self.modality_of is None:
            pools = {None: []}
        else:
            pools = {m: [] for m in sorted(set(self.modality_of.values()))}
        for g in labels.tolist():
            pools[None if self.modality_of is None else self.modality_of[self.group_names[g]]].append(
                streams[g][taken[g]])
            taken[g] += 1
        batches = []
        for modality, order in pools.items():
            cut = [np.concatenate(order[i : i + per]).tolist() for i in range(0, len(order), per)]
            if self.drop_last and cut and len(order) % per:
                cut.pop()
                if modality is not None:
                    log.debug("epoch %d: %d %s sub-batch(es) do not fill a device batch and wait for the next "
                              "epoch's draw", epoch, len(order) % per, modality)
            batches.extend(cut)
        if self.modality_of is not None:
            batches = [batches[i] for i in rng.permutation(len(batches)).tolist()]
        return batches


class HomogeneousBatchSampler(GroupedBatchSampler):
    """Task-homogeneous batches (METHODS §7, VLM2Vec v2): every sub-batch comes from a single subset.

    `sub_batch_size` defaults to the device batch size (one subset per device batch). Negatives from
    another task are trivially easy (a caption never answers a VQA query), so keeping a batch on one
    task makes every in-batch negative informative. `weights` maps subset → weight (see
    `GroupedBatchSampler` for how an epoch is defined with and without them); with `weights=None` and a
    data mixture (`data=mixture`: every subset_info entry has its source's `weight`) the data's weights are
    used — they are defined once, in `data.sources.<name>.weight`.

    Composes with the other groupings (METHODS §6–§7, §14):
    - `modality_batches=True`: a device batch holds sub-batches of one query modality (LLaVE's grouping:
      image / text / video / visdoc); every subset must have a single query modality.
    - `clusters_dir` (or `mined_root`): SaHa clusters (`python mine.py`) packed whole into the sub-batches of
      their subset (`SaHaBatchSampler`'s cluster files and checks); a cluster must fit in a sub-batch, and
      a sub-batch may be a few rows short when whole clusters do not fill it.
    """

    group_kind = "subset"

    def __init__(self, pairs: Sequence, batch_size: int, seed: int = 0, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1, subset_info: dict | None = None, *, sub_batch_size: int | None = None,
                 weights: Mapping[str, float] | None = None, sub_batches_per_epoch: int | None = None,
                 modality_batches: bool = False, clusters_dir: str | None = None, mined_root: str | None = None,
                 dedupe: bool = False):
        info = dict(subset_info or {})
        data_weights = {s: i["weight"] for s, i in info.items() if "weight" in i}
        #: Where the weights come from: "sampler", "data" (a mixture's sources) or None (proportional).
        self.weights_from = "sampler" if weights is not None else None
        if data_weights:
            if weights is not None:
                raise ValueError("weights are defined twice: in data.sources.<name>.weight and in sampler.weights; "
                                 "keep the data's (set sampler.weights=null)")
            weights, self.weights_from = data_weights, "data"
        self.clusters = bool(clusters_dir or mined_root)
        self.dedupe = bool(dedupe)
        self._cluster_report: dict[str, dict[str, int]] = {}
        if self.clusters:
            self.subset_info = info  # read by the cluster loading below, before the base class sets it
            self.clusters_dir = _saha_dir(clusters_dir, mined_root, info)
        super().__init__(pairs, batch_size, seed, drop_last, rank, world_size, subset_info,
                         sub_batch_size=sub_batch_size, weights=weights, sub_batches_per_epoch=sub_batches_per_epoch)
        if self.clusters:
            log.info("SaHa clusters in sub-batches (%s, dedupe=%s): per subset %s", self.clusters_dir, self.dedupe,
                     self._cluster_report)
        if modality_batches:
            modality: dict[str, str] = {}
            for g, rows in zip(self.group_names, self.group_rows):
                kinds = Counter(query_modality(pairs[int(i)].query) for i in rows)
                if len(kinds) > 1:
                    raise ValueError(f"sampler.modality_batches: subset {g!r} mixes query modalities {dict(kinds)}; "
                                     "a sub-batch must be single-subset and single-modality. Split the subset or "
                                     "drop modality_batches")
                modality[g] = next(iter(kinds))
            self.modality_of = modality

    def group_of(self, pair) -> str:
        return pair.subset

    def group_layout(self, group: str, positions: list[int]) -> _PackingLayout | None:
        if not self.clusters:
            return None
        position = {(self.pairs[p].subset, self.pairs[p].row): p for p in positions}
        units, report = cluster_units(self.clusters_dir, group, positions, position, self.subset_info.get(group),
                                      self.dedupe, self.sub_batch_size, "sampler.sub_batch_size")
        self._cluster_report[group] = report
        return _PackingLayout(units, self.sub_batch_size, drop_last=True)


def query_modality(item) -> str:
    """The modality a query is grouped by: video, visdoc (several pages), image or text."""
    return "video" if item.video else "visdoc" if item.pages else "image" if item.image else "text"


class ModalityBatchSampler(GroupedBatchSampler):
    """Modality grouping (LLaVE): device batches of image queries and of text-only queries, never mixed.

    Groups are "image" and "text" (by the query side; "video" and "visdoc" for video and multi-page queries);
    `weights` may weight them like subsets.
    """

    group_kind = "modality"

    def __init__(self, pairs: Sequence, batch_size: int, seed: int = 0, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1, subset_info: dict | None = None, *,
                 weights: Mapping[str, float] | None = None, sub_batches_per_epoch: int | None = None):
        # One sub-batch per device batch: a device batch must hold a single modality.
        super().__init__(pairs, batch_size, seed, drop_last, rank, world_size, subset_info, sub_batch_size=None,
                         weights=weights, sub_batches_per_epoch=sub_batches_per_epoch)

    def group_of(self, pair) -> str:
        return query_modality(pair.query)


# ------------------------------------------------------------------------------------------------
# SaHa cluster files
# ------------------------------------------------------------------------------------------------

CLUSTER_FILE_FORMAT = "embedlab.saha_clusters.v1"
CLUSTER_FILE_SUFFIX = ".saha.json"
#: Header fields that must equal the data (and mining settings) for a file to be reused as it is.
CLUSTER_MATCH_FIELDS = ("format", "subset", "split", "num_rows", "fingerprint", "k", "pool_mult",
                        "classification", "index", "embedder", "prompt")


def source_name(source: str) -> str:
    """A directory name for a data source: `owner__name` for a hub id; for a local snapshot its last two
    path parts plus a hash of the full path (two snapshots both called `…/train` must not share files)."""
    source = str(source)
    if os.path.isabs(source):
        readable = "-".join(Path(source).parts[-2:])
        name = f"{readable}-{hashlib.sha256(source.encode()).hexdigest()[:8]}"
    else:
        name = source.replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def mined_data_dir(mined_root: str | os.PathLike, source: str, split: str) -> Path:
    """Where `python mine.py` writes what it mines from `source`/`split` by default, and where
    `sampler=saha` looks for cluster files: `<mined_root>/<source_name(source)>/<split>`.
    `source` is the data source as `datamodules.mmeb.describe_source` spells it."""
    return Path(mined_root) / source_name(source) / str(split)


def cluster_file_path(directory: str | os.PathLike, subset: str) -> Path:
    return Path(directory) / f"{subset}{CLUSTER_FILE_SUFFIX}"


def cluster_file_header(subset: str, info: Mapping[str, Any], *, k: int, pool_mult: int, classification: bool,
                        index: str, embedder: Mapping[str, Any], prompt: Mapping[str, Any] | None) -> dict:
    """The identifying header of a cluster file mined from the subset described by `info` (subset_info)."""
    return {"format": CLUSTER_FILE_FORMAT, "subset": subset, "split": info["split"], "source": info["source"],
            "num_rows": int(info["num_rows"]), "fingerprint": info["fingerprint"], "k": int(k),
            "pool_mult": int(pool_mult), "classification": bool(classification), "index": index,
            "embedder": dict(embedder), "prompt": dict(prompt) if prompt is not None else None}


def write_cluster_file(path: str | os.PathLike, header: Mapping[str, Any], clusters: Sequence[Sequence[int]],
                       phase1_clusters: int, stats: Mapping[str, Any]) -> Path:
    """Write a cluster file atomically (temporary file + rename: a reader never sees half a file).

    `clusters` hold row ids of the subset as read (phase-1 clusters first, `phase1_clusters` of them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**header, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "stats": dict(stats), "phase1_clusters": int(phase1_clusters),
               "clusters": [[int(r) for r in c] for c in clusters]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            # One cluster per line keeps 100K-row files diffable and quick to eyeball.
            body = {k: v for k, v in payload.items() if k != "clusters"}
            text = json.dumps(body, indent=1)[:-2]
            text += ',\n "clusters": [\n' + ",\n".join(json.dumps(c) for c in payload["clusters"]) + "\n ]\n}\n"
            f.write(text)
        respect_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def mine_command(directory: str | os.PathLike) -> str:
    return (f"python mine.py mining.method=saha data=<the data config you train with> <the same data.* overrides> "
            f"mining.out_dir={directory}")


def read_cluster_file(path: str | os.PathLike, subset: str, info: Mapping[str, Any] | None) -> dict:
    """Load a cluster file and check that it was mined from this data; returns the parsed file.

    Refused (DataError naming the file and field): another subset or split, a different row count or
    fingerprint than `info` (the subset as read now), malformed clusters or row ids out of range. A
    different `k` is fine (clusters are whatever the file holds).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no SaHa cluster file {path}. Mine it with `{mine_command(path.parent)}` (the default "
                        "out_dir needs no mining.out_dir), or point sampler.clusters_dir at the directory "
                        "that holds it", dataset=subset)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"cluster file {path} cannot be read ({type(e).__name__}: {e}); re-mine it with "
                        f"`{mine_command(path.parent)} mining.force=true`", dataset=subset) from None

    def refuse(field: str, message: str):
        raise DataError(f"cluster file {path}: {message}. Re-mine it from this data with "
                        f"`{mine_command(path.parent)} mining.force=true`", dataset=subset, field=field)

    if not isinstance(data, dict) or data.get("format") != CLUSTER_FILE_FORMAT:
        refuse("format", f"format is {data.get('format') if isinstance(data, dict) else None!r}, "
                         f"expected {CLUSTER_FILE_FORMAT!r}")
    if data.get("subset") != subset:
        refuse("subset", f"it was mined for subset {data.get('subset')!r}, not {subset!r}")
    if info is not None:
        if data.get("split") != info.get("split"):
            refuse("split", f"it was mined from split {data.get('split')!r} but the data uses split {info.get('split')!r}")
        if data.get("num_rows") != info.get("num_rows"):
            refuse("num_rows", f"it was mined from {data.get('num_rows')} rows but the subset has {info.get('num_rows')} "
                               "rows as read now (check data.max_per_subset / data.subsets caps)")
        if data.get("fingerprint") != info.get("fingerprint"):
            refuse("fingerprint", f"its row fingerprint {data.get('fingerprint')} differs from the data's "
                                  f"{info.get('fingerprint')}: the rows changed since mining")
        if data.get("source") != info.get("source"):
            log.info("cluster file %s was mined from %s; the data now comes from %s (same rows: fingerprints match)",
                     path, data.get("source"), info.get("source"))
    clusters = data.get("clusters")
    num_rows = data.get("num_rows")
    if not isinstance(num_rows, int) or not isinstance(clusters, list):
        refuse("clusters", "it has no integer num_rows or no list of clusters")
    for c, cluster in enumerate(clusters):
        if not isinstance(cluster, list) or not cluster or not all(
                isinstance(r, int) and not isinstance(r, bool) for r in cluster):
            refuse("clusters", f"cluster {c} is not a non-empty list of row ids: {cluster!r:.80}")
        bad = [r for r in cluster if not 0 <= r < num_rows]
        if bad:
            refuse("clusters", f"cluster {c} holds row id {bad[0]}, outside [0, {num_rows})")
        if len(set(cluster)) != len(cluster):
            refuse("clusters", f"cluster {c} lists a row twice: {cluster}")
    phase1 = data.get("phase1_clusters", len(clusters))
    if not isinstance(phase1, int) or not 0 <= phase1 <= len(clusters):
        refuse("phase1_clusters", f"phase1_clusters={phase1!r} is not in [0, {len(clusters)}]")
    return data


def cluster_file_matches(path: str | os.PathLike, header: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether the file at `path` exists and was mined with exactly `header`'s data and settings (and why not)."""
    path = Path(path)
    if not path.is_file():
        return False, "no file yet"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return False, f"unreadable ({type(e).__name__})"
    for field in CLUSTER_MATCH_FIELDS:
        if data.get(field) != header.get(field):
            return False, f"{field} differs"
    return True, "up to date"


# ------------------------------------------------------------------------------------------------
# SaHa batches
# ------------------------------------------------------------------------------------------------


def _best_fit_decreasing(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item sizes, largest first) of a best-fit-decreasing packing of `sizes`.

    The result depends only on the multiset of sizes, not on their order, which is what lets every
    epoch reuse one packing layout (and so have the same number of batches) with different clusters.
    """
    bins: list[list[int]] = []
    free: list[int] = []
    # Open bins by free room: sorted distinct room values, and the bins that have each.
    rooms: list[int] = []
    by_room: dict[int, list[int]] = {}
    for size in sorted(sizes, reverse=True):
        at = bisect.bisect_left(rooms, size)
        if at < len(rooms):
            room = rooms[at]
            b = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(at)
        else:
            b = len(bins)
            bins.append([])
            free.append(capacity)
        bins[b].append(size)
        free[b] -= size
        if free[b] > 0:
            if free[b] not in by_room:
                bisect.insort(rooms, free[b])
                by_room[free[b]] = []
            by_room[free[b]].append(b)
    return bins


class _PackingLayout:
    """Units (lists of row positions) packed whole into bins of at most `capacity` rows.

    The layout (which bin holds how many units of which size) is fixed at construction; each epoch the
    units of every size are shuffled into that size's slots, so the batch count never changes.
    """

    def __init__(self, units: list[list[int]], capacity: int, drop_last: bool):
        self.units_by_size: dict[int, list[list[int]]] = {}
        for unit in units:
            self.units_by_size.setdefault(len(unit), []).append(unit)
        bins = _best_fit_decreasing([len(u) for u in units], capacity)
        if drop_last and bins and all(s == 1 for s in bins[-1]) and sum(bins[-1]) < capacity:
            # Best fit opens a bin for a one-row unit only when every other bin is full, so this is the
            # one partial batch of leftover rows: the batch drop_last drops. Which rows miss the epoch
            # changes every epoch (`fill` draws as many one-row units as there are slots). Batches of
            # whole clusters a few rows short are kept: clusters are never split.
            bins.pop()
        self.num_bins = len(bins)
        #: slot_bins[size] = the bin of each slot for units of that size, in slot order.
        self.slot_bins: dict[int, list[int]] = {}
        for b, sizes in enumerate(bins):
            for size in sizes:
                self.slot_bins.setdefault(size, []).append(b)
        self.rows_per_bin = [sum(sizes) for sizes in bins]

    def fill(self, rng: np.random.Generator) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in range(self.num_bins)]
        for size in sorted(self.slot_bins, reverse=True):
            units, slots = self.units_by_size[size], self.slot_bins[size]
            for slot, u in enumerate(rng.permutation(len(units))[: len(slots)].tolist()):
                out[slots[slot]].extend(units[u])
        return out


def _saha_dir(clusters_dir: str | None, mined_root: str | None, subset_info: Mapping[str, Mapping]) -> Path:
    """Where the cluster files are: `clusters_dir`, else mine.py's default directory for the data's source/split."""
    if clusters_dir:
        return Path(clusters_dir)
    sources = {(i.get("source"), i.get("split")) for i in subset_info.values()}
    if mined_root is None or len(sources) != 1 or None in next(iter(sources)):
        raise ValueError("SaHa clusters need sampler.clusters_dir, or sampler.mined_root plus one data source and "
                         f"split in subset_info (got {sorted(map(str, sources))})")
    source, split = next(iter(sources))
    return mined_data_dir(mined_root, source, split)


def cluster_units(clusters_dir: Path, subset: str, positions: list[int], position: Mapping[tuple[str, int], int],
                  info: Mapping[str, Any] | None, dedupe: bool, capacity: int,
                  capacity_name: str) -> tuple[list[list[int]], dict[str, int]]:
    """The units of one subset: its clusters (as positions in the sampler's rows), then its leftover rows as
    singletons, and counts for the log. Rows of the file that are not training rows (held out, missing images)
    are dropped from their cluster and counted; `dedupe` keeps a row in its first cluster only."""
    path = cluster_file_path(clusters_dir, subset)
    data = read_cluster_file(path, subset, info)
    file_clusters = data["clusters"]
    largest = max((len(c) for c in file_clusters), default=0)
    if largest > capacity:
        raise ValueError(f"{path} holds clusters of up to {largest} rows (k={data.get('k')}) but {capacity_name}="
                         f"{capacity}: a cluster must fit in one batch. Raise {capacity_name} to ≥ {largest} or "
                         f"re-mine with mining.k ≤ {capacity - 1}")
    phase1 = data.get("phase1_clusters", len(file_clusters))
    seen: set[int] = set()
    units: list[list[int]] = []
    dropped_rows = deduped_rows = reused_rows = 0
    for c, cluster in enumerate(file_clusters):
        kept = []
        for row in cluster:
            pos = position.get((subset, row))
            if pos is None:
                dropped_rows += 1
                continue
            if pos in seen:
                if dedupe:
                    deduped_rows += 1
                    continue
                if c < phase1:
                    raise DataError(f"cluster file {path}: row {row} is in two phase-1 clusters, which "
                                    "SaHa never produces; re-mine the file", dataset=subset, field="clusters")
                reused_rows += 1
            seen.add(pos)
            kept.append(pos)
        if kept:
            units.append(kept)
    leftovers = [p for p in positions if p not in seen]
    report = {"clusters": len(units), "rows_in_clusters": sum(len(u) for u in units),
              "singletons": len(leftovers), "held_out_rows_dropped": dropped_rows,
              "phase2_reuses": reused_rows, "deduped": deduped_rows}
    return units + [[p] for p in leftovers], report


class SaHaBatchSampler(EpochBatchSampler):
    """SaHa batches (METHODS §6): whole clusters of mutually hard rows, placed contiguously in one batch.

    Cluster files (`<clusters_dir>/<subset>.saha.json`, written by `python mine.py`) are read for every
    subset in the data and checked against it (`read_cluster_file`). Their row ids are mapped to positions
    in `pairs`: rows that are not there (held-out validation rows, rows dropped for missing images) are
    dropped from their cluster and counted; rows in no cluster (SaHa's leftovers) become clusters of one.

    Packing: whole clusters, never split, into device batches of at most `batch_size` rows, largest
    first into the fullest batch they fit (best-fit decreasing), rows of no cluster filling the gaps.
    The layout is computed once; every epoch shuffles the clusters of each size into it (seeded by
    (seed, epoch)) and shuffles the batch order, so the number of batches is the same every epoch.
    Batches can be a few rows short of `batch_size` when whole clusters do not fill them.
    `drop_last` drops only the one partial batch made of leftover rows.

    `dedupe=False` (the paper's behaviour): phase-2 clusters reuse phase-1 members, so those rows are
    trained twice per epoch. `dedupe=True`: each row at most once per epoch (a row keeps its first
    cluster in file order; later clusters lose it). `mix_subsets=False` packs every subset on its own,
    so no batch mixes subsets.

    `clusters_dir=None` reads from `mined_data_dir(mined_root, source, split)`, where mine.py writes by
    default.
    """

    def __init__(self, pairs: Sequence, batch_size: int, seed: int = 0, drop_last: bool = True, rank: int = 0,
                 world_size: int = 1, subset_info: dict | None = None, *, clusters_dir: str | None = None,
                 mined_root: str | None = None, dedupe: bool = False, mix_subsets: bool = True):
        super().__init__(pairs, batch_size, seed, drop_last, rank, world_size, subset_info)
        self.dedupe, self.mix_subsets = bool(dedupe), bool(mix_subsets)
        self.clusters_dir = _saha_dir(clusters_dir, mined_root, self.subset_info)
        position: dict[tuple[str, int], int] = {}
        by_subset: dict[str, list[int]] = {}
        for i, pair in enumerate(pairs):
            position[(pair.subset, pair.row)] = i
            by_subset.setdefault(pair.subset, []).append(i)
        #: Per subset: the units (clusters of positions, then leftover singletons) and counts for the log.
        self.units: dict[str, list[list[int]]] = {}
        self.report: dict[str, dict[str, int]] = {}
        for subset, positions in by_subset.items():
            self.units[subset], self.report[subset] = cluster_units(
                self.clusters_dir, subset, positions, position, self.subset_info.get(subset), self.dedupe,
                self.batch_size, "data.batch_size")
        pools = [sum(self.units.values(), [])] if self.mix_subsets else list(self.units.values())
        self.layouts = [_PackingLayout(units, self.batch_size, self.drop_last) for units in pools]
        rows = sum(sum(layout.rows_per_bin) for layout in self.layouts)
        bins = sum(layout.num_bins for layout in self.layouts)
        # held_out_rows_dropped: clustered rows that are not training rows (validation, missing images).
        log.info("SaHa sampler (%s, dedupe=%s, mix_subsets=%s): %d batches of ≤%d rows per epoch, %.1f rows on "
                 "average; per subset %s", self.clusters_dir, self.dedupe, self.mix_subsets, bins, self.batch_size,
                 rows / max(bins, 1), self.report)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = self.rng(epoch)
        batches = [b for layout in self.layouts for b in layout.fill(rng)]
        return [batches[i] for i in rng.permutation(len(batches)).tolist()]
