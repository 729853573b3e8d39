"""One activation-checkpointing mechanism per run under FSDP, and one parameter dtype for FSDP's flat
parameters. The strategy object is built on CPU (Lightning refuses to *run* FSDP without GPUs)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from embedders import EmbeddingModule
from embedders.finetune import hf_checkpointing_enabled
from embedders.strategies import fsdp_strategy
from losses import InfoNCE

OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5}


def module(checkpointing: bool, **kw):
    return EmbeddingModule(family="llava_onevision", config={}, optimizer=OPT, scheduler=None, loss=InfoNCE(),
                           gradient_checkpointing=checkpointing, **kw)


def test_the_llave_recipes_get_one_mechanism(compose_cfg):
    cfg = compose_cfg("train", ["experiment=llave_0.5b"])
    assert cfg.model.gradient_checkpointing is True and cfg.trainer.strategy.activation_checkpointing is None
    m = module(cfg.model.gradient_checkpointing)
    assert hf_checkpointing_enabled(m.embedder.backbone)
    kwargs = OmegaConf.to_container(cfg.trainer.strategy)
    for key in ("_target_", "_partial_"):
        kwargs.pop(key)
    strategy = fsdp_strategy(m, **kwargs)
    assert strategy._activation_checkpointing_kwargs  # FSDP's wrapper checkpoints the blocks …
    assert not hf_checkpointing_enabled(m.embedder.backbone)  # … and transformers' flag is off: once


def test_checkpointing_follows_the_model_and_two_explicit_mechanisms_are_refused():
    assert not fsdp_strategy(module(False))._activation_checkpointing_kwargs
    assert fsdp_strategy(module(False), activation_checkpointing=True)._activation_checkpointing_kwargs
    kept = module(True)
    assert not fsdp_strategy(kept, activation_checkpointing=False)._activation_checkpointing_kwargs
    assert hf_checkpointing_enabled(kept.embedder.backbone)  # left to the model
    with pytest.raises(ValueError, match="two activation-checkpointing mechanisms"):
        fsdp_strategy(module(True), activation_checkpointing=True)


def test_fsdp_gets_one_parameter_dtype():
    m = module(False, dtype="bfloat16", freeze_vision=True)
    assert {p.dtype for p in m.parameters()} == {torch.float32, torch.bfloat16}
    fsdp_strategy(m)
    assert {p.dtype for p in m.parameters()} == {torch.float32}
