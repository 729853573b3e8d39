"""Refusing a training run before any work: config value types, combinations that cannot train, and data that
gives no optimizer step."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from embedders.settings import FSDP2_TARGET, check_gradcache_config, refuse_true_precision
from operations.config_types import ConfigTypeError, check_config_types

if TYPE_CHECKING:
    import lightning as L


#: The config nodes whose values are checked against what they configure.
TRAIN_KEYS = ("model", "loss", "data", "sampler", "trainer", "callbacks", "logger")


class RefusedToStart(ValueError):
    """A configuration that this run refuses before doing any work."""


def validate_config(cfg: DictConfig, static: bool = False) -> None:
    """Refuse misconfigurations before anything expensive starts: value types (every key of every
    `_target_` node), then combinations (RefusedToStart, a ValueError). `static=True`: the checks that need
    nothing imported (signatures read from the source; train.py runs them before torch is imported)."""
    try:
        _validate_config(cfg, static)
    except ValueError as e:
        if isinstance(e, RefusedToStart):
            raise
        raise RefusedToStart(str(e)) from None


def _validate_config(cfg: DictConfig, static: bool = False) -> None:
    check_config_types(cfg, keys=TRAIN_KEYS, static=static)
    for key, kind in (("seed", int), ("evaluate_before", bool), ("evaluate_after", bool), ("save_embedder", bool),
                      ("resume_allow_changes", bool)):
        value = cfg.get(key)
        if value is not None and (type(value) is not kind):
            raise ConfigTypeError(f"config values of the wrong type (nothing was run):\n  {key} must be "
                                  f"{kind.__name__}, got {value!r} ({type(value).__name__})")
    for key in ("trainer.max_steps", "trainer.max_epochs"):
        if OmegaConf.select(cfg, key) == 0:
            raise ValueError(f"{key}=0: this run would make no optimizer step; give a positive number (or -1 for "
                             "no limit on that count)")
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches")
    if limit is not None and limit == 0:
        raise ValueError("trainer.limit_train_batches=0: this run would make no optimizer step")
    chunk = OmegaConf.select(cfg, "model.gradcache.chunk_size")
    budget = OmegaConf.select(cfg, "data.max_tokens_per_batch", default=None)
    if budget is not None and chunk is None:
        raise ValueError(f"data.max_tokens_per_batch={budget} bounds the tokens of one forward pass, which GradCache "
                         "makes the unit of memory: set model.gradcache.chunk_size too (the most rows a chunk may "
                         "hold; e.g. data.batch_size for chunks cut by the token budget alone)")
    check_gradcache_config(chunk, OmegaConf.select(cfg, "data.batch_size"),
                           OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1) or 1)
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    if "fsdp" in target.lower():
        if target != FSDP2_TARGET:
            raise ValueError(f"trainer.strategy._target_={target}: FSDP runs through {FSDP2_TARGET} (FSDP2, every "
                             "rank running the same units whatever its rows); use trainer=fsdp (GPUs) or "
                             "trainer=fsdp_cpu (CPU ranks)")
        refuse_true_precision(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
        accel = OmegaConf.select(cfg, "trainer.accelerator")
        if static:
            return  # whether CUDA is there is asked after the imports
        import torch

        if accel in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError("trainer=fsdp needs GPUs and none is visible here; FSDP on CPU ranks (gloo) is "
                             "trainer=fsdp_cpu trainer.devices=N")


def check_training_steps(trainer: L.Trainer, datamodule) -> int:
    """Refuse, before any work, a run whose data gives no optimizer step; returns the steps per epoch."""
    datamodule.setup("fit")
    sampler = datamodule.build_train_sampler(rank=0, world_size=trainer.world_size)
    batches = len(sampler)
    limit = trainer.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float) and limit < 1.0:
        batches = int(batches * limit)
    accumulate = max(1, int(trainer.accumulate_grad_batches))
    steps = -(-batches // accumulate)  # the last partial accumulation of an epoch still steps
    if steps > 0:
        return steps
    pairs = len(datamodule.train_pairs)
    per_subset: dict[str, int] = {}
    for p in datamodule.train_pairs:
        per_subset[p.subset] = per_subset.get(p.subset, 0) + 1
    world = trainer.world_size
    raise RefusedToStart(
        f"this run would make no optimizer step: {pairs} training pairs ({per_subset}, after holding out "
        f"data.val_per_subset={datamodule.val_per_subset} per subset) in batches of data.batch_size="
        f"{datamodule.batch_size} with data.drop_last={datamodule.drop_last} over {world} rank(s) give {batches} "
        f"batch(es) per epoch (trainer.limit_train_batches={limit}). Lower data.batch_size (at most "
        f"{max(1, pairs // world)}), set data.drop_last=false, or use more data")


