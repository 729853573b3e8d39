"""Score an embedding model with the MMEB protocol:
`python evaluate.py embedder_dir=DIR`, `python evaluate.py ckpt_path=CKPT`, or zero-shot
`python evaluate.py model=<config> [model.path=<hub id or dir>] [prompt=hierarchical]`.
Writes results.json and results.md to the run directory and prints the table."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runtime import adapt_cfg_with_multirun, finish_loggers, instantiate_group

log = logging.getLogger("embedlab.evaluate")


def load_embedder(cfg: DictConfig):
    """The Embedder named by the config (embedder_dir, then ckpt_path, then model)."""
    from embedders import Embedder, EmbeddingModule

    prompt = OmegaConf.to_container(cfg.prompt, resolve=True) if cfg.get("prompt") else None
    if cfg.get("embedder_dir"):
        # The saved prompt is used as it is: training and evaluation must format identically.
        return Embedder.from_pretrained(cfg.embedder_dir, dtype=cfg.get("dtype"))
    if cfg.get("ckpt_path"):
        if not Path(cfg.ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={cfg.ckpt_path} does not exist")
        module = EmbeddingModule.load_from_checkpoint(cfg.ckpt_path, map_location="cpu", loss=None)
        return module.embedder
    module = instantiate(cfg.model, loss=None, prompt=prompt, _convert_="partial")
    return module.embedder


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run(cfg: DictConfig) -> dict:
    from evaluation.runner import build_suite, score

    embedder = load_embedder(cfg).to(pick_device(cfg.device))
    suite = build_suite(cfg.eval_data)
    loggers = instantiate_group(cfg.get("logger"))
    label = cfg.get("embedder_dir") or cfg.get("ckpt_path") or OmegaConf.select(cfg, "model.path") or cfg.run_name
    results = score(embedder, suite, cfg.eval, str(label), Path(cfg.paths.output_dir), loggers, "eval")
    finish_loggers(loggers)
    log.info("results written to %s", cfg.paths.output_dir)
    return results


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    return run(cfg)["overall"]


if __name__ == "__main__":
    import sys

    sys.argv = adapt_cfg_with_multirun(sys.argv)
    main()
