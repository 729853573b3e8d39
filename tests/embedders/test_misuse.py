"""Misuse is refused clearly, before or at the step where it happens."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from embedders import EmbeddingModule
from embedders.module import NonFiniteLossError
from losses import InfoNCE
from training import job as train

OPT = {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3}


def test_gradcache_with_accumulation_is_refused(compose_cfg):
    cfg = compose_cfg("train", ["model.gradcache.chunk_size=8", "trainer.accumulate_grad_batches=4"])
    with pytest.raises(ValueError, match=r"GradCache .*accumulate_grad_batches=4"):
        train.validate_config(cfg)


def test_chunk_larger_than_batch_is_refused(compose_cfg):
    cfg = compose_cfg("train", ["model.gradcache.chunk_size=64", "data.batch_size=32"])
    with pytest.raises(ValueError, match=r"chunk_size=64 is larger than data.batch_size=32"):
        train.validate_config(cfg)
    for bad in ("0", "abc"):
        cfg = compose_cfg("train", [f"model.gradcache.chunk_size={bad}"])
        with pytest.raises(ValueError, match="positive integer"):
            train.validate_config(cfg)


def test_learnable_temperature_without_optimizer_group_is_refused():
    module = EmbeddingModule(family="qwen2_vl", config={}, optimizer=OPT, scheduler=None,
                             loss=InfoNCE(learnable_temperature=True))
    module.configure_optimizers()  # the module's own groups include the temperature
    module.param_groups = lambda: [{"params": [p for p in module.embedder.parameters()]}]
    with pytest.raises(ValueError, match="learnable temperature needs an optimizer group"):
        module.configure_optimizers()


def test_nan_loss_stops_with_step_and_ids():
    class NaNLoss(InfoNCE):
        def forward(self, q, t, keys=None):
            return super().forward(q, t, keys) * float("nan")

    module = EmbeddingModule(family="qwen2_vl", config={}, optimizer=OPT, scheduler=None, loss=NaNLoss())
    build = module.embedder.input_builder
    batch = {"query": [build(["a red circle", "a blue square"], None, "query")],
             "target": [build(["red", "blue"], None, "target")], "target_keys": torch.tensor([1, 2]),
             "num_pairs": 2, "ids": ["ShapeCls/17", "ShapeCls/42"]}
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match=r"global step 0.*\['ShapeCls/17', 'ShapeCls/42'\]"):
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
