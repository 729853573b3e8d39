"""Loading the one Embedder a command names — a saved Embedder directory (`embedder_dir=`), a training checkpoint
(`ckpt_path=`) or a model config (`model=…`, zero-shot) — for evaluate.py and mine.py, and the device it runs on."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from operations.hydra_app import task_overrides

from .checkpoint_io import load_trained_module
from .dtypes import resolve_dtype
from .embedder import Embedder
from .source_checks import ModelSourceError, check_model_path, check_saved_embedder


def check_embedder_source(cfg: DictConfig) -> None:
    """evaluate.py / mine.py score one model: refuse a command line that names two sources, or a model/prompt
    that the given source would silently ignore (a saved Embedder or a checkpoint brings its own), and a source that
    cannot be loaded (a wrong model.path, a run directory given as embedder_dir, a damaged saved Embedder), all with
    `ModelSourceError` before any model is loaded."""
    given = [k for k in ("embedder_dir", "ckpt_path") if cfg.get(k)]
    if len(given) > 1:
        raise ModelSourceError(f"both embedder_dir={cfg.embedder_dir} and ckpt_path={cfg.ckpt_path} are set: give "
                               "one model to score")
    if not given:
        check_model_path(OmegaConf.select(cfg, "model.path"))
        return
    ignored = [o for o in task_overrides()
               if o.lstrip("+~").split("=")[0].split(".")[0].split("@")[0] in ("model", "prompt")]
    if ignored:
        key = given[0]
        raise ModelSourceError(
            f"{key}={cfg[key]} scores the model saved there, with the prompt it was trained with; "
            f"{', '.join(ignored)} would be ignored. Drop {' '.join(ignored)}, or drop {key}= to score "
            "model=… zero-shot (dtype= applies to every source)")
    if cfg.get("embedder_dir"):
        check_saved_embedder(cfg.embedder_dir)


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
