"""Glue shared by the entry points (train.py, evaluate.py, mine.py): Hydra resolvers for run names
and W&B groups, rank detection before Lightning starts, and instantiation of loggers/callbacks."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict


def _run_name(default: str) -> str:
    """The overrides of a multirun job (readable, unique within the sweep), else `default`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    hc = HydraConfig.get()
    overrides = hc.job.override_dirname if str(hc.mode) == "RunMode.MULTIRUN" else ""
    return overrides or default


def _run_group(default: str) -> str:
    """One W&B group per multirun sweep (its directory name), else `default`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
        return f"{default}-{Path(HydraConfig.get().sweep.dir).name}"
    return default


def register_resolvers() -> None:
    for name, fn in (("embedlab_run_name", _run_name), ("embedlab_run_group", _run_group)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def is_launcher_rank_zero() -> bool:
    """True in the process that launched the run (not in DDP children or non-zero SLURM tasks)."""
    return all(int(os.environ.get(v, "0")) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def wandb_run_id(cfg: DictConfig, output_dir: Path) -> None:
    """Keep one W&B run per output directory: a resumed (or requeued) run logs into the same run."""
    if OmegaConf.select(cfg, "logger.wandb") is None or OmegaConf.select(cfg, "logger.wandb.id"):
        return
    id_file = output_dir / "wandb_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        output_dir.mkdir(parents=True, exist_ok=True)
        if is_launcher_rank_zero():
            id_file.write_text(run_id + "\n")
    with open_dict(cfg):
        cfg.logger.wandb.id = run_id
        cfg.logger.wandb.resume = "allow"


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry with a `_target_` of a config group (callbacks, logger)."""
    return [instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]
