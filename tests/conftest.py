"""Shared fixtures: offline environment, a small bundled dataset, Hydra composition."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import runtime  # noqa: E402,F401  (registers the Hydra resolvers the configs use)

SMALL_BUNDLED = {"train_per_subset": 60, "eval_per_dataset": 12, "seed": 0}


@pytest.fixture(scope="session")
def bundled_root(tmp_path_factory) -> Path:
    """A small bundled dataset shared by the whole session."""
    from datamodules.bundled import ensure_bundled

    root = tmp_path_factory.mktemp("bundled")
    ensure_bundled(root, **SMALL_BUNDLED)
    return root


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """Compose a config as the app would, with the Hydra runtime set so ${hydra:…} resolves."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


def tiny_overrides(bundled_root: Path, extra: list[str] | None = None) -> list[str]:
    """CPU, a few steps, the session's small bundled dataset, no W&B."""
    return [
        f"bundled.root={bundled_root}",
        f"bundled.train_per_subset={SMALL_BUNDLED['train_per_subset']}",
        f"bundled.eval_per_dataset={SMALL_BUNDLED['eval_per_dataset']}",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "data.batch_size=8",
        "data.val_batch_size=8",
        "data.val_per_subset=4",
        "callbacks.model_checkpoint.every_n_train_steps=3",
        "logger=csv",
        *(extra or []),
    ]


@pytest.fixture
def compose_cfg(tmp_path):
    """compose_cfg(config_name, overrides) -> DictConfig with output_dir in tmp_path."""

    def _compose(config_name: str, overrides: list[str]):
        return compose(config_name, overrides, tmp_path / "run")

    return _compose


@pytest.fixture
def tiny_cfg(bundled_root):
    """tiny_cfg(extra) -> the override list for a few-step CPU run on the session's small dataset."""
    return lambda extra=None: tiny_overrides(bundled_root, extra)
