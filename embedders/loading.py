"""Loading the one Embedder a command names — a saved Embedder directory (`embedder_dir=`), a training checkpoint
(`ckpt_path=`) or a model config (`model=…`, zero-shot) — for evaluate.py and mine.py, and the device it runs on."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .checkpoint_io import load_trained_module
from .dtypes import resolve_dtype
from .embedder import Embedder


def load_embedder(cfg: DictConfig):
    """The Embedder named by the config (embedder_dir, ckpt_path or model; check_embedder_source refuses
    more than one), in `cfg.dtype` when set, whichever the source."""
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
