"""The MMEB training DataModule: reads subsets (hub id or local snapshot), validates them,
holds out a validation slice, and serves batches through a pluggable, resumable batch sampler.

It knows nothing of models: the entry point hands it the embedder's `InputBuilder` with
`set_input_builder` before fitting.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .collate import PairCollator
from .errors import DataError
from .media import MediaLoader
from .mmeb import describe_source, image_paths_missing, read_train_subset
from .offline import ensure_offline
from .samplers import EpochBatchSampler, RandomBatchSampler, ValidationBatchSampler
from .schema import TrainPair, rows_fingerprint
from .teacher_scores import load_teacher_scores
from .workers import is_worker_timeout, stop_workers

log = logging.getLogger(__name__)


class PairDataset(Dataset):
    def __init__(self, pairs: Sequence[TrainPair]):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> TrainPair:
        return self.pairs[i]


class ValidationDataset(Dataset):
    """Items of `ValidationBatchSampler` — (global batch index, row, is_padding) — to (pair, batch index, padding)."""

    def __init__(self, pairs: Sequence[TrainPair]):
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: tuple[int, int, bool]) -> tuple[TrainPair, int, bool]:
        batch_index, row, padding = item
        return self.pairs[row], batch_index, padding


class ValidationCollator:
    """A `PairCollator` batch plus `val_batch_index` (its index among the single-process validation batches)
    and `val_padding` (a filler batch that only keeps the ranks' step counts equal; the module skips it)."""

    def __init__(self, collator: PairCollator):
        self.collator = collator

    def __call__(self, items: Sequence[tuple[TrainPair, int, bool]]) -> dict:
        batch = self.collator([pair for pair, _, _ in items])
        batch["val_batch_index"] = items[0][1]
        batch["val_padding"] = bool(items[0][2])
        return batch


#: The default of `data.worker_timeout_s`: seconds a training or validation step waits for a batch from the
#: DataLoader workers before the run stops with an error instead of hanging (datamodules/workers.py). The wait counts
#: only while the loop waits for its next batch, so a slow batch never comes near it; only a worker that will never
#: deliver does.
WORKER_TIMEOUT_S = 600.0
#: The longest `data.worker_timeout_s`: a week. Python's queue waits take milliseconds as a C int (a wait over
#: ~24.8 days raises OverflowError on every batch), and a stuck worker should not hold a cluster job for longer.
MAX_WORKER_TIMEOUT_S = 7 * 24 * 3600


class WorkerTimeoutError(RuntimeError):
    """No batch from a loader's workers within its time-out; the workers have been stopped."""


def _stopped(iterator, timeout: float, what: str) -> WorkerTimeoutError:
    """Stop the workers of `iterator` (torch's, or None if it never got made) and the error that says so."""
    workers = len(getattr(iterator, "_workers", None) or ())
    stop_workers(iterator)
    return WorkerTimeoutError(
        f"{what}: the DataLoader's {workers} worker(s) gave no batch in {timeout:g} s (a worker stuck at start-up, "
        "or a read that never returns); they were stopped. Continue with `python train.py resume=<this run "
        "directory>` (from the last checkpoint), or with data.num_workers=0 to read in the training process")


class _BatchesWithDeadline:
    """A worker loader's iterator whose time-out stops the workers (killed if need be, so the run's exit does not
    wait for them) and says what to do. Everything else is the wrapped iterator's. Not picklable, like torch's
    (Lightning drops torch's iterators when it pickles a loader mid-epoch; nothing here pickles one)."""

    def __init__(self, iterator, what: str, timeout: float):
        self._iterator, self._what, self._timeout = iterator, what, timeout

    def __iter__(self):
        return self

    def __len__(self) -> int:
        return len(self._iterator)

    def __next__(self):
        try:
            return next(self._iterator)
        except RuntimeError as err:
            if not is_worker_timeout(err):
                raise
            raise _stopped(self._iterator, self._timeout, self._what) from err

    def __getattr__(self, name: str):
        if name == "_iterator":   # not set yet (a copy being built): no delegation to recurse through
            raise AttributeError(name)
        return getattr(self._iterator, name)


def _iterate_with_deadline(loader: DataLoader, start: Callable, what: str):
    """`start()` (the DataLoader's own __iter__) with its batches behind the deadline. With persistent workers a
    new epoch waits inside `start()` too (torch's `_reset` waits for every worker to acknowledge the epoch, under
    the same time-out): that wait stops the workers the same way."""
    if loader.num_workers == 0:
        return start()
    try:
        iterator = start()
    except RuntimeError as err:
        if not is_worker_timeout(err):
            raise
        raise _stopped(getattr(loader, "_iterator", None), loader.timeout, what) from err
    return _BatchesWithDeadline(iterator, what, loader.timeout)


def _worker_timeout(num_workers: int, seconds: float) -> float:
    """torch allows a time-out only with workers (the single-process iterator asserts 0)."""
    return float(seconds) if num_workers > 0 else 0


class ResumableDataLoader(DataLoader):
    """A DataLoader whose batch sampler resumes mid-epoch from a checkpoint (Lightning's _Stateful).

    The consumed-batch count comes from the trainer's loop progress (`progress_fn`), not from the
    iterator, which runs ahead of training by the prefetched batches.
    """

    progress_fn: Callable[[], tuple[int, int]] | None = None
    #: The generator's state just before the running iterator drew its base seed (which seeds the workers).
    _generator_state: torch.Tensor | None = None

    def __iter__(self):
        if self.generator is not None and (getattr(self, "_iterator", None) is None or not self.persistent_workers):
            self._generator_state = self.generator.get_state()
        return _iterate_with_deadline(self, super().__iter__, "training")

    def state_dict(self) -> dict:
        epoch, consumed = self.progress_fn() if self.progress_fn else (self.batch_sampler.epoch, 0)
        # The generator is seeded alike on every rank (workers get rank-specific seeds from Lightning's worker
        # init), so this rank-0 copy, which Lightning saves with the loop state, is every rank's state.
        return {"epoch": int(epoch), "consumed": int(consumed), "generator": self._generator_state}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.resume(state["epoch"], state["consumed"])
        if state.get("generator") is not None and self.generator is not None:
            # The resumed iterator then draws the base seed the interrupted one drew: same worker seeds.
            self.generator.set_state(state["generator"])


class ValidationDataLoader(DataLoader):
    """The validation loader: with workers, a time-out stops them and the run (as in training)."""

    def __iter__(self):
        return _iterate_with_deadline(self, super().__iter__, "validation")


def _check_int(name: str, value, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")


def _subset_caps(subsets, max_per_subset) -> dict[str, int | None]:
    if isinstance(subsets, str):
        subsets = [subsets]
    if isinstance(subsets, Mapping):
        return {str(k): (int(v) if v is not None else max_per_subset) for k, v in subsets.items()}
    return {str(s): max_per_subset for s in subsets}


class MMEBDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str,
        subsets: Sequence[str] | Mapping[str, int | None],
        split: str = "original",
        image_root: str | None = None,
        max_per_subset: int | None = None,
        use_hard_negatives: bool = True,
        max_negatives_per_pair: int | None = 1,
        val_per_subset: int = 0,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        sampler: Callable[..., EpochBatchSampler] | None = None,
        seed: int = 0,
        bundled: Mapping[str, Any] | None = None,
        check_images: bool = True,
        on_missing_image: str = "error",
        num_frames: int = 8,
        max_frames_saved: int | None = 64,
        teacher_scores: str | None = None,
        group_by_length: bool = True,
        max_tokens_per_batch: int | None = None,
        worker_timeout_s: float = WORKER_TIMEOUT_S,
    ):
        super().__init__()
        if on_missing_image not in ("error", "skip"):
            raise ValueError(f"data.on_missing_image must be 'error' or 'skip', got {on_missing_image!r}")
        _check_int("data.batch_size", batch_size, minimum=1)
        _check_int("data.val_batch_size", val_batch_size, minimum=1, optional=True)
        _check_int("data.num_workers", num_workers, minimum=0)
        _check_int("data.val_per_subset", val_per_subset, minimum=0)
        _check_int("data.max_per_subset", max_per_subset, minimum=1, optional=True)
        _check_int("data.max_negatives_per_pair", max_negatives_per_pair, minimum=0, optional=True)
        _check_int("data.max_tokens_per_batch", max_tokens_per_batch, minimum=1, optional=True)
        #: GradCache chunks cut from rows grouped by length, each within `max_tokens_per_batch` padded tokens.
        self.group_by_length, self.max_tokens_per_batch = bool(group_by_length), max_tokens_per_batch
        self.source, self.split = str(source), split
        self.caps = _subset_caps(subsets, max_per_subset)
        if not self.caps:
            raise ValueError("data.subsets is empty: name at least one training subset")
        # Images, and (video subsets) videos sampled to `num_frames` as the MMEB-V2 reference does.
        self.image_loader = MediaLoader(image_root, num_frames, max_frames_saved)
        self.use_hard_negatives, self.max_negatives_per_pair = use_hard_negatives, max_negatives_per_pair
        self.val_per_subset = int(val_per_subset)
        self.batch_size, self.val_batch_size = int(batch_size), int(val_batch_size or batch_size)
        self.num_workers, self.pin_memory, self.drop_last = int(num_workers), pin_memory, drop_last
        if isinstance(worker_timeout_s, bool) or not isinstance(worker_timeout_s, (int, float)) or not (
                0 < worker_timeout_s <= MAX_WORKER_TIMEOUT_S):
            raise ValueError(f"data.worker_timeout_s must be a positive number of seconds up to "
                             f"{MAX_WORKER_TIMEOUT_S:,} (7 days; how long a step waits for a batch from the DataLoader "
                             f"workers before the run stops), got {worker_timeout_s!r}")
        self.worker_timeout_s = float(worker_timeout_s)
        self.sampler_factory = sampler or RandomBatchSampler
        self.seed = int(seed)
        self.bundled = dict(bundled) if bundled else None
        self.check_images, self.on_missing_image = check_images, on_missing_image
        #: Directory of teacher-score files (mine.py mining.method=teacher) for loss=distill; None = none.
        self.teacher_scores_dir = str(teacher_scores) if teacher_scores else None
        #: {pair uid: (candidate keys, teacher scores)}, read in setup when teacher_scores is set.
        self.teacher_scores: dict | None = None
        self.input_builder = None
        self.guide_input_builder = None
        self.chunk_size: int | None = None
        self.train_pairs: list[TrainPair] = []
        self.val_pairs: list[TrainPair] = []
        #: Per subset, as read (before any row is dropped or held out): {"num_rows", "fingerprint"}.
        self.subset_info: dict[str, dict] = {}
        #: Rows left out, per subset and reason: the reference's skips (`empty_query`, `empty_positive`) and
        #: `missing_image` (data.on_missing_image=skip).
        self.skipped: dict[str, dict[str, int]] = {}
        #: Rows kept with a note, per subset and reason (e.g. `placeholder_without_image`).
        self.notes: dict[str, dict[str, int]] = {}
        self._train_loader: ResumableDataLoader | None = None

    # ------------------------------------------------------------------ wiring
    def set_input_builder(self, input_builder: Callable, chunk_size: int | None = None,
                          guide_input_builder: Callable | None = None) -> None:
        """The student's input builder; `guide_input_builder` (a frozen guide model's, for guided in-batch
        false-negative filtering) makes every batch also carry `guide_query` / `guide_target` inputs."""
        self.input_builder, self.chunk_size = input_builder, chunk_size
        self.guide_input_builder = guide_input_builder

    def prepare_data(self) -> None:
        if self.bundled is not None:
            ensure_offline(self.bundled)

    # ------------------------------------------------------------------ data
    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs:
            return
        if self.bundled is not None:
            self.prepare_data()  # cheap when present; other ranks may reach setup first on some launchers
        rng = np.random.default_rng(self.seed)
        train, val = [], []
        read = self.read_subsets()
        if self.teacher_scores_dir is not None:
            self.teacher_scores = load_teacher_scores(self.teacher_scores_dir, read, self.subset_info)
            log.info("teacher scores of %d rows from %s", len(self.teacher_scores), self.teacher_scores_dir)
        missing = self._missing_images(read) if self.check_images else set()
        for subset, pairs in read.items():
            pairs = self._drop_missing_images(subset, pairs, missing)
            n_val = min(self.val_per_subset, len(pairs) // 2)
            held = set(rng.choice(len(pairs), size=n_val, replace=False).tolist()) if n_val else set()
            val.extend(p for i, p in enumerate(pairs) if i in held)
            train.extend(p for i, p in enumerate(pairs) if i not in held)
            info = self.subset_info.get(subset, {})
            log.info("subset %s: %d train / %d val pairs (%s, split %s)", subset, len(pairs) - n_val, n_val,
                     info.get("source", describe_source(self.source)), info.get("split", self.split))
        self.train_pairs, self.val_pairs = train, val

    def read_subsets(self) -> dict[str, list[TrainPair]]:
        """Every subset's pairs as read, recording its skips, notes and `subset_info` (subclasses read other
        layouts: `datamodules.mixture.MixtureDataModule`)."""
        read = {}
        for subset, cap in self.caps.items():
            pairs, skipped, notes = read_train_subset(self.source, subset, self.split, cap, self.use_hard_negatives)
            self.skipped[subset], self.notes[subset] = dict(skipped), dict(notes)
            self.subset_info[subset] = {"num_rows": len(pairs), "fingerprint": rows_fingerprint(pairs),
                                        "split": self.split, "source": describe_source(self.source)}
            read[subset] = pairs
        return read

    def _missing_images(self, subsets: Mapping[str, list[TrainPair]]) -> set[str]:
        """Image paths of every subset missing under the image root, checked once per node: local rank 0 stats
        them (parallel threads, progress bar) and the other ranks of its node receive its answer."""
        items = [it for pairs in subsets.values() for p in pairs for it in (p.query, p.positive, *p.negatives)]
        trainer = self.trainer
        distributed = trainer is not None and trainer.world_size > 1 and torch.distributed.is_initialized()
        if not distributed:
            return set(image_paths_missing(items, self.image_loader))
        found = set(image_paths_missing(items, self.image_loader)) if trainer.local_rank == 0 else None
        gathered = [None] * trainer.world_size
        torch.distributed.all_gather_object(gathered, found)
        return gathered[trainer.global_rank - trainer.local_rank]  # this node's local rank 0

    def _drop_missing_images(self, subset: str, pairs: list[TrainPair], missing: set[str]) -> list[TrainPair]:
        if not missing or not any(it.image in missing for p in pairs for it in (p.query, p.positive, *p.negatives)):
            return pairs
        bad = [p for p in pairs if any(it.image in missing for it in (p.query, p.positive, *p.negatives))]
        missing = {it.image for p in bad for it in (p.query, p.positive, *p.negatives) if it.image in missing}
        example = bad[0]
        fields = [("qry_image_path", example.query), ("pos_image_path", example.positive)]
        fields += [("neg_image_path", n) for n in example.negatives]
        field = next(f for f, it in fields if it.image in missing)
        if self.on_missing_image == "error":
            raise DataError(
                f"{len(missing)} image file(s) missing under image root {self.image_loader.root}, used by "
                f"{len(bad)} row(s), e.g. {sorted(missing)[:3]}. Unzip the images there, fix data.image_root, "
                "or set data.on_missing_image=skip to drop those rows (counted and logged)",
                dataset=subset, row=example.row, field=field)
        self.skipped.setdefault(subset, {})["missing_image"] = len(bad)
        log.warning("subset %s: skipped %d of %d rows whose images are missing (data.on_missing_image=skip), "
                    "e.g. %s", subset, len(bad), len(pairs), sorted(missing)[:3])
        keep = {id(p) for p in pairs} - {id(p) for p in bad}
        return [p for p in pairs if id(p) in keep]

    def skip_summary(self) -> str:
        """One line per subset with skipped rows ("" when none): what train.py writes to summary.txt."""
        lines = [f"{subset}: {sum(r.values())} rows skipped ({', '.join(f'{k} {v}' for k, v in sorted(r.items()))})"
                 for subset, r in self.skipped.items() if r]
        return "\n".join(lines)

    def _collator(self) -> PairCollator:
        if self.input_builder is None:
            raise RuntimeError("MMEBDataModule.set_input_builder(embedder.input_builder) must be called before "
                               "requesting dataloaders (the entry point does this)")
        return PairCollator(self.input_builder, self.image_loader, self.chunk_size, self.max_negatives_per_pair,
                            teacher_scores=self.teacher_scores, guide_input_builder=self.guide_input_builder,
                            group_by_length=self.group_by_length, max_tokens_per_chunk=self.max_tokens_per_batch)

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _progress(self) -> tuple[int, int]:
        loop = self.trainer.fit_loop
        return loop.epoch_progress.current.processed, loop.epoch_loop.batch_progress.current.processed

    def build_train_sampler(self, rank: int | None = None, world_size: int | None = None) -> EpochBatchSampler:
        """The training batch sampler of this rank (or of `rank` of `world_size`, e.g. to count batches before
        the Trainer is attached)."""
        rank, world = (rank, world_size) if world_size is not None else self._rank_world()
        return self.sampler_factory(pairs=self.train_pairs, batch_size=self.batch_size, seed=self.seed,
                                    drop_last=self.drop_last, rank=rank, world_size=world,
                                    subset_info=self.subset_info)

    def _generator(self) -> torch.Generator:
        # A DataLoader draws its workers' base seed from this generator each time it creates an
        # iterator; with the default (the global RNG) that draw would shift the model's dropout masks,
        # so validation would change training and a resumed run would diverge from the uninterrupted one.
        return torch.Generator().manual_seed(self.seed)

    def train_dataloader(self) -> ResumableDataLoader:
        if not self.train_pairs:
            self.setup("fit")
        loader = ResumableDataLoader(
            PairDataset(self.train_pairs), batch_sampler=self.build_train_sampler(), collate_fn=self._collator(),
            num_workers=self.num_workers, pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0,
            generator=self._generator(), timeout=_worker_timeout(self.num_workers, self.worker_timeout_s),
        )
        if self.trainer is not None:
            loader.progress_fn = self._progress
        self._train_loader = loader
        return loader

    def val_dataloader(self):
        if not self.val_pairs:
            return []
        rank, world = self._rank_world()
        # Any number of rows on any number of ranks: every rank runs the same number of steps (padding batches).
        sampler = ValidationBatchSampler(len(self.val_pairs), self.val_batch_size, rank=rank, world_size=world)
        return ValidationDataLoader(ValidationDataset(self.val_pairs), batch_sampler=sampler,
                                    collate_fn=ValidationCollator(self._collator()), num_workers=self.num_workers,
                                    pin_memory=self.pin_memory, generator=self._generator(),
                                    timeout=_worker_timeout(self.num_workers, self.worker_timeout_s))
