"""The FSDP configs: trainer=fsdp (GPUs) and trainer=fsdp_cpu (gloo) compose from one strategy piece; precisions
that would drop the fp32 master weights are refused; activation checkpointing is transformers' own, once."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from embedders import EmbeddingModule
from embedders.finetune import hf_checkpointing_enabled
from embedders.strategies import FSDP2_TARGET, FSDP2Strategy, refuse_true_precision
from losses import InfoNCE
from training import job as train


def test_gpu_and_cpu_configs_share_the_strategy(compose_cfg):
    gpu, cpu = (compose_cfg("train", [f"trainer={t}"]).trainer for t in ("fsdp", "fsdp_cpu"))
    assert gpu.strategy._target_ == cpu.strategy._target_ == FSDP2_TARGET
    shared = {k: v for k, v in OmegaConf.to_container(gpu.strategy).items() if k != "process_group_backend"}
    assert shared == {k: v for k, v in OmegaConf.to_container(cpu.strategy).items() if k != "process_group_backend"}
    assert (gpu.accelerator, gpu.precision, cpu.accelerator, cpu.precision) == ("gpu", "bf16-mixed", "cpu", "32-true")
    assert cpu.strategy.process_group_backend == "gloo"
    # clipping and checkpoint IO come from trainer=cpu for both: a global norm over the sharded gradients
    assert gpu.gradient_clip_val == cpu.gradient_clip_val == 1.0 and gpu.gradient_clip_algorithm == "norm"
    assert isinstance(instantiate(gpu.strategy), FSDP2Strategy)


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "16-mixed"])
def test_precisions_without_master_weights_are_refused(compose_cfg, precision):
    with pytest.raises(ValueError, match=r"trainer.precision=.* under FSDP"):
        refuse_true_precision(precision)
    cfg = compose_cfg("train", ["trainer=fsdp_cpu", f"trainer.precision={precision}"])
    with pytest.raises(ValueError, match="under FSDP"):
        train.validate_config(cfg)
    train.validate_config(compose_cfg("train", ["trainer=fsdp_cpu", "trainer.precision=bf16-mixed"]))


def test_fsdp1_and_fsdp_without_gpus_are_refused(compose_cfg):
    cfg = compose_cfg("train", ["+trainer.strategy._target_=lightning.pytorch.strategies.FSDPStrategy"])
    with pytest.raises(ValueError, match="FSDP runs through embedders.strategies.FSDP2Strategy"):
        train.validate_config(cfg)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="FSDP on CPU ranks"):
            train.validate_config(compose_cfg("train", ["trainer=fsdp"]))


def test_the_llave_recipes_checkpoint_once(compose_cfg):
    """LLaVE's recipe asks for gradient checkpointing: transformers' own (non-reentrant, inside each FSDP unit);
    the strategy has no second mechanism, so a block is recomputed once."""
    cfg = compose_cfg("train", ["experiment=llave_0.5b"])
    assert cfg.model.gradient_checkpointing is True and "activation_checkpointing" not in cfg.trainer.strategy
    m = EmbeddingModule(family="llava_onevision", config={}, loss=InfoNCE(), gradient_checkpointing=True,
                        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5})
    assert hf_checkpointing_enabled(m.embedder.backbone)
