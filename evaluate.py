"""Score an embedding model with the MMEB protocol:
`python evaluate.py embedder_dir=DIR`, `python evaluate.py ckpt_path=CKPT`, or zero-shot
`python evaluate.py model=<config> [model.path=<hub id or dir>] [prompt=hierarchical]`.
`devices=N` shards the encoding over N processes (GPUs, or CPU processes with device=cpu).
Writes results.json and results.md to the run directory and prints the table."""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runtime import (
    adapt_cfg_with_multirun,
    apply_image_limits,
    check_embedder_source,
    finish_loggers,
    instantiate_group,
    quiet_known_noise,
)

log = logging.getLogger("embedlab.evaluate")


def load_embedder(cfg: DictConfig):
    """The Embedder named by the config (embedder_dir, ckpt_path or model; check_embedder_source refuses
    more than one), in `cfg.dtype` when set, whichever the source."""
    from embedders import Embedder
    from embedders.checkpoint_io import load_trained_module
    from embedders.embedder import resolve_dtype

    dtype = cfg.get("dtype")
    if cfg.get("embedder_dir"):
        # The saved prompt is used as it is: training and evaluation must format identically.
        return Embedder.from_pretrained(cfg.embedder_dir, dtype=dtype)
    if cfg.get("ckpt_path"):
        embedder = load_trained_module(cfg.ckpt_path).embedder
        return embedder.to(resolve_dtype(dtype)) if dtype else embedder
    prompt = OmegaConf.to_container(cfg.prompt, resolve=True) if cfg.get("prompt") else None
    overrides = {"dtype": dtype} if dtype else {}  # loaded in that dtype, not cast afterwards
    module = instantiate(cfg.model, loss=None, prompt=prompt, _convert_="partial", **overrides)
    return module.embedder


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
    from evaluation.runner import build_suite, score
    from operations.config_types import check_config_types

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


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return run(cfg)["overall"]


if __name__ == "__main__":
    import sys

    sys.argv = adapt_cfg_with_multirun(sys.argv)
    main()
