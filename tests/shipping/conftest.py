"""Fixtures for the shipping tests: real all-MiniLM-L6-v2 weights, tiny multimodal Embedders, one short LoRA training
run on the bundled data (shared by the card, export, Hub and MTEB tests), and a stand-in for `AutoProcessor` on
machines where torchvision is unusable (as on the CPU machines of this project: the registry's torchvision is a
CUDA build that fails to import next to the CPU build of torch)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from shipping import save_embedder

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("embedlab_tests_conftest", ROOT / "tests" / "conftest.py")
base_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(base_conftest)


def tiny_model_config(name: str) -> dict:
    return yaml.safe_load((ROOT / "conf" / "model" / f"{name}.yaml").read_text())


def build_tiny(family: str, prompt="plain", seed: int = 0, **kwargs):
    from embedders import Embedder

    cfg = tiny_model_config({"qwen2_vl": "tiny_qwen2vl", "llava_onevision": "tiny_llava_ov"}[family])
    torch.manual_seed(seed)
    kwargs.setdefault("image", cfg.get("image"))
    return Embedder.build(family=family, config=cfg["config"], prompt=prompt, **kwargs)


@pytest.fixture(scope="session")
def minilm_export(minilm_path, tmp_path_factory):
    """(Embedder, directory): all-MiniLM-L6-v2 as an embedlab text encoder, saved once for the session."""
    from embedders import Embedder

    embedder = Embedder.build("text_encoder", path=str(minilm_path), pooling="mean", normalize=True, max_length=256)
    return embedder, save_embedder(embedder, tmp_path_factory.mktemp("minilm") / "export")


@pytest.fixture(scope="session")
def card_snippet():
    """card_snippet(directory) -> the namespace after running the card's plain-transformers code on `directory`."""
    import re

    def run(directory: Path) -> dict:
        card = (Path(directory) / "README.md").read_text()
        code = re.search(r"### transformers\n\n```python\n(.*?)```", card, re.S).group(1)
        code = re.sub(r'^MODEL = ".*"$', f'MODEL = "{directory}"', code, flags=re.M)
        namespace: dict = {}
        exec(compile(code, f"{directory}/README.md (transformers)", "exec"), namespace)
        return namespace

    return run


@pytest.fixture(scope="session")
def tiny_embedder():
    """tiny_embedder(family, prompt="plain", seed=0, **build_kwargs) -> a randomly initialised tiny Embedder."""
    return build_tiny


@pytest.fixture(autouse=True)
def _stock_processor_or_image_only(offline_auto_processor):
    """Every shipping test loads saved directories the way sentence-transformers does (tests/conftest.py)."""


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, bundled_root):
    """A 3-step LoRA run of the tiny Qwen2-VL (the default prompt, hardness-weighted loss with Matryoshka dims),
    its base model a local directory saved by embedlab; scored on the small bundled eval. Returns the run directory
    (with `.hydra/config.yaml` as Hydra writes it) and the outcome of train.run."""
    from omegaconf import OmegaConf

    from training import job as train

    root = tmp_path_factory.mktemp("shipping_run")
    base = save_embedder(build_tiny("qwen2_vl"), root / "base")
    run_dir = root / "run"
    overrides = base_conftest.tiny_overrides(bundled_root, [
        f"model.path={base}", "model.config=null", "model.lora={r:4,alpha:8}",
        "loss=hardness_weighted", "loss.matryoshka_dims=[32,128]", "evaluate_before=false",
        "data.subsets=[ShapeCls,ShapeT2I]"])
    cfg = base_conftest.compose("train", overrides, run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    outcome = train.run(cfg)
    return run_dir, outcome
