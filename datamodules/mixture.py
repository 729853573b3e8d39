"""A training mixture (METHODS §14, VLM2Vec-V2's `experiments/public/train/*.yaml`): many sources, each read by
its own parser (`datamodules/mmeb_v2_train.py`) with its own sample cap, instruction texts and hard negatives, and
drawn with its own weight.

`MixtureDataModule` is the MMEB DataModule with another reader: the sources become its subsets (one subset per
source, named after it), so validation hold-out, image checks, collation, resumable loading and the samplers work
unchanged. The weights go to the sampler through `subset_info[<source>]["weight"]` and are defined once, in
`data.sources.<name>.weight`: the sampler must apply them (`HomogeneousBatchSampler`, whose
`sub_batch_size` makes same-source sub-batches; 1 draws every row's source by weight), else the run is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from .datamodule import WORKER_TIMEOUT_S, MMEBDataModule
from .mmeb import describe_source
from .mmeb_v2_train import TrainSource, read_source, sources_from_config
from .samplers import EpochBatchSampler
from .schema import TrainPair, rows_fingerprint

log = logging.getLogger(__name__)


class MixtureDataModule(MMEBDataModule):
    """`sources`: {name: {parser, source, subset, split, media_root, weight, max_samples, negatives, data_mode,
    query_instruction, target_instruction}} (`datamodules.mmeb_v2_train.TrainSource`). The other arguments are
    `MMEBDataModule`'s (`max_negatives_per_pair` caps what the collator feeds per row, as there)."""

    def __init__(
        self,
        sources: Mapping[str, Mapping[str, Any]],
        val_per_subset: int = 0,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        max_negatives_per_pair: int | None = 1,
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
        group_by_length: bool = True,
        max_tokens_per_batch: int | None = None,
        worker_timeout_s: float = WORKER_TIMEOUT_S,
    ):
        self.sources: list[TrainSource] = sources_from_config(sources)
        if sum(s.weight for s in self.sources) <= 0:
            raise ValueError("data.sources: every weight is 0; give at least one source a positive weight")
        super().__init__(source="mixture", subsets={s.name: s.max_samples for s in self.sources}, split="mixture",
                         image_root=None, use_hard_negatives=True, max_negatives_per_pair=max_negatives_per_pair,
                         val_per_subset=val_per_subset, batch_size=batch_size, val_batch_size=val_batch_size,
                         num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last, sampler=sampler,
                         seed=seed, bundled=bundled, check_images=check_images, on_missing_image=on_missing_image,
                         num_frames=num_frames, max_frames_saved=max_frames_saved, group_by_length=group_by_length,
                         max_tokens_per_batch=max_tokens_per_batch, worker_timeout_s=worker_timeout_s)

    @property
    def weights(self) -> dict[str, float]:
        return {s.name: float(s.weight) for s in self.sources}

    def read_subsets(self) -> dict[str, list[TrainPair]]:
        read = {}
        for s in self.sources:
            pairs, skipped, notes = read_source(s)
            self.skipped[s.name], self.notes[s.name] = dict(skipped), dict(notes)
            self.subset_info[s.name] = {"num_rows": len(pairs), "fingerprint": rows_fingerprint(pairs),
                                        "split": s.split or "default", "source": describe_source(s.source),
                                        "parser": s.parser, "weight": float(s.weight)}
            read[s.name] = pairs
            log.info("source %s (%s, weight %g, cap %s): %d pairs", s.name, s.parser, s.weight, s.max_samples,
                     len(pairs))
        return read

    def build_train_sampler(self, rank: int | None = None, world_size: int | None = None) -> EpochBatchSampler:
        sampler = super().build_train_sampler(rank, world_size)
        if getattr(sampler, "weights_from", None) != "data":
            raise ValueError(f"data=mixture draws each source by its weight (data.sources.<name>.weight), but "
                             f"sampler {type(sampler).__name__} does not apply them: use sampler=homogeneous "
                             "(sampler.sub_batch_size: rows per same-source sub-batch; 1 = every row drawn by "
                             "weight; sampler.modality_batches / sampler.clusters_dir compose with it)")
        h = getattr(sampler, "sub_batch_size", None)
        if self.chunk_size and h and h % self.chunk_size and not getattr(sampler, "clusters", False):
            raise ValueError(f"model.gradcache.chunk_size={self.chunk_size} must divide sampler.sub_batch_size={h}, so "
                             "that GradCache chunks never span two sources")
        return sampler
