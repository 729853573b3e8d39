"""The evaluation job that `python evaluate.py` runs: load the one model the command names, shard the encoding over
`devices=N` processes (Lightning Fabric), score the eval suite with the MMEB protocol and write the results."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from datamodules.images import apply_image_limits
from embedders.loading import load_embedder, pick_device
from operations.config_types import check_config_types
from operations.hydra_app import check_embedder_source, finish_loggers, instantiate_group, quiet_known_noise

from .runner import build_suite, score

log = logging.getLogger("embedlab.evaluate")


def launch(cfg: DictConfig):
    """(fabric or None, device): with `devices > 1`, Lightning Fabric starts one DDP process per device
    (NCCL on GPUs, gloo on CPU; under Hydra the workers share this run directory) and each encodes a shard."""
    devices = cfg.get("devices", 1)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"devices must be a positive integer (processes to shard the encoding over), got {devices!r}")
    device = pick_device(cfg.device)
    if devices == 1:
        return None, device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"devices={devices} shards over CPU processes or CUDA GPUs; device={cfg.device} is neither")
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise ValueError(f"devices={devices}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=device.type, devices=devices, strategy="ddp")
    fabric.launch()
    return fabric, fabric.device


def run(cfg: DictConfig) -> dict:
    quiet_known_noise()
    check_embedder_source(cfg)
    source_given = bool(cfg.get("embedder_dir") or cfg.get("ckpt_path"))
    check_config_types(cfg, keys=("logger",) if source_given else ("model", "logger"))
    apply_image_limits(cfg)
    fabric, device = launch(cfg)
    L.seed_everything(cfg.seed, workers=True)  # a randomly initialised (config) backbone: same weights everywhere
    embedder = load_embedder(cfg).truncated(cfg.eval.get("dim")).to(device)  # eval.dim=N: Matryoshka prefix
    if not source_given and OmegaConf.select(cfg, "model.path") is None:
        log.warning("scoring a randomly initialised %s (model.path is null): the untrained baseline. Score a trained "
                    "model with embedder_dir=<run>/embedder or ckpt_path=<run>/checkpoints/last.ckpt",
                    OmegaConf.select(cfg, "model.family"))
    with fabric.rank_zero_first() if fabric else nullcontext():
        suite = build_suite(cfg.eval_data)
    main_rank = fabric is None or fabric.global_rank == 0
    loggers = instantiate_group(cfg.get("logger")) if main_rank else []
    label = cfg.get("embedder_dir") or cfg.get("ckpt_path") or OmegaConf.select(cfg, "model.path") or cfg.run_name
    results = score(embedder, suite, cfg.eval, str(label), Path(cfg.paths.output_dir), loggers, "eval",
                    distributed=fabric is not None)
    finish_loggers(loggers)
    if main_rank:
        log.info("results written to %s", cfg.paths.output_dir)
    return results
