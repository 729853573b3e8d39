"""Guided in-batch false-negative filtering through train.py: a frozen guide Embedder (`+model.guide.embedder_dir`)
embeds every batch, built by the collator with the guide's own input builder; it stays frozen, out of the
checkpoint, and out of the optimizer."""

from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from embedders import Embedder
from training import job as train


def test_guided_training_through_the_datamodule(compose_cfg, tiny_cfg, tmp_path):
    torch.manual_seed(3)
    guide_dir = Embedder.build("qwen2_vl", config={"text": {"hidden_size": 64}},
                               image={"min_pixels": 7056, "max_pixels": 7056}).save_pretrained(tmp_path / "guide")
    cfg = compose_cfg("train", tiny_cfg(["loss.guide_margin=0.0", f"+model.guide.embedder_dir={guide_dir}",
                                         "trainer.max_steps=2", "evaluate_before=false", "evaluate_after=false",
                                         "data.subsets=[ShapeCls,ShapeT2I]"]))
    module = instantiate(cfg.model, loss=instantiate(cfg.loss), _convert_="partial")
    guide = module._guide
    assert guide is not None and not any(p.requires_grad for p in guide.parameters())
    assert not any(k.startswith("_guide") for k in module.state_dict())  # not saved, not trained
    datamodule = instantiate(cfg.data, sampler=None, _convert_="partial")
    datamodule.set_input_builder(module.embedder.input_builder, None, module.guide_input_builder)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    side = module.loss_side_inputs(batch)
    assert side["guide_query"].shape == (8, 64) and side["guide_target"].shape[0] == batch["target_keys"].shape[0]
    before = {k: v.clone() for k, v in guide.state_dict().items()}
    train.validate_config(cfg)
    train.run(cfg)
    # the guide's weights are untouched by training
    assert all(torch.equal(v, before[k]) for k, v in guide.state_dict().items())


def test_guided_loss_without_a_guide_is_refused(compose_cfg, tiny_cfg):
    cfg = compose_cfg("train", tiny_cfg(["loss.guide_margin=0.0"]))
    with pytest.raises(InstantiationException, match="model.guide is not"):
        instantiate(cfg.model, loss=instantiate(cfg.loss), _convert_="partial")
