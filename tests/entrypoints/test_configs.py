"""Every config composes; misconfigurations are refused with messages that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

import train

CONF = Path(__file__).resolve().parents[2] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(compose_cfg, experiment):
    cfg = compose_cfg("train", [f"experiment={experiment}"])
    assert cfg.model._target_ and cfg.loss._target_ and cfg.data._target_
    import torch

    if "fsdp" in str(cfg.trainer.get("strategy", {}).get("_target_", "")).lower() and not torch.cuda.is_available():
        with pytest.raises(ValueError, match="FSDP"):  # validated: trainer=fsdp is refused without GPUs
            train.validate_config(cfg)
    else:
        train.validate_config(cfg)


def test_fsdp_config_builds_its_strategy(compose_cfg):
    """trainer=fsdp composes into the FSDP2 strategy (built, not run: it shards in the module's configure_model)."""
    from embedders.strategies import FSDP2Strategy

    cfg = compose_cfg("train", ["trainer=fsdp", "model.lora={r:4}"])
    assert cfg.trainer.precision == "bf16-mixed"
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy) and strategy.param_dtype is None and strategy.reshard_after_forward


@pytest.mark.parametrize("group", ["model", "loss", "data", "sampler", "trainer", "logger", "eval_data", "prompt"])
def test_every_group_option_composes(compose_cfg, group):
    for option in sorted(p.stem for p in (CONF / group).glob("*.yaml")):
        compose_cfg("train", [f"{group}={option}"])


def test_evaluate_config_composes(compose_cfg):
    cfg = compose_cfg("evaluate", ["prompt=hierarchical", "eval_data=mmeb_eval"])
    assert len(cfg.eval_data.datasets) == 36


def test_wrong_type_is_named(compose_cfg):
    cfg = compose_cfg("train", ["data.batch_size=abc"])
    with pytest.raises(InstantiationException, match="data.batch_size must be an integer, got 'abc'"):
        instantiate(cfg.data)
    cfg = compose_cfg("train", ["loss.temperature=hot"])
    with pytest.raises(InstantiationException, match="loss.temperature must be a number"):
        instantiate(cfg.loss)
