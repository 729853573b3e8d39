"""Fine-tuning modes on the tiny Qwen2-VL: LoRA and DoRA train only adapters outside the vision tower,
LoRA works with non-reentrant gradient checkpointing, freeze_vision freezes exactly the vision tower."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from embedders import Embedder


def _backward(emb: Embedder) -> None:
    inputs = emb.input_builder(["<|image_1|>\nRepresent the given image.", "a red circle"],
                               [Image.new("RGB", (56, 56), "red"), None], "query")
    emb.train()
    emb(inputs).sum().backward()


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_and_dora_train_only_adapters(dora, checkpointing):
    torch.manual_seed(0)
    emb = Embedder.build("qwen2_vl", config={}, image={"min_pixels": 56 * 56, "max_pixels": 56 * 56},
                         lora={"r": 4, "alpha": 8, "use_dora": dora}, gradient_checkpointing=checkpointing)
    trainable = {n for n, p in emb.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)  # the vision tower is left alone by default
    assert any("lora_magnitude_vector" in n for n in trainable) == dora
    _backward(emb)
    params = dict(emb.named_parameters())
    assert all(params[n].grad is not None for n in trainable)  # the backward reaches every adapter
    # lora_B starts at zero, so only B (and DoRA's magnitudes) get a non-zero gradient on the first step
    moving = {n for n in trainable if "lora_A" not in n}
    assert moving and all(params[n].grad.abs().sum() > 0 for n in moving)


def test_freeze_vision():
    emb = Embedder.build("qwen2_vl", config={}, freeze_vision=True)
    frozen = {n for n, p in emb.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in emb.named_parameters() if n.startswith("backbone.visual.")}
