"""`model.dropout`: one number for every dropout probability of the backbone (nn.Dropout modules, the float
attributes transformers' attention layers read, the configs). Checked on the real all-MiniLM-L6-v2 (dropout 0.1
in its hidden layers and in its SDPA attention): with model.dropout=0 a forward pass in train mode is the
eval-mode forward pass, bit for bit; without it two train-mode passes differ."""

from __future__ import annotations

import hydra
import pytest
import torch
from PIL import Image
from torch import nn

from embedders import EmbeddingModule
from embedders.finetune import set_dropout
from losses import InfoNCE

TEXTS = ["a red circle", "a blue square", "two green stars", "the yellow triangle"]


def _module(path, **kwargs) -> EmbeddingModule:
    return EmbeddingModule(family="text_encoder", path=str(path), pooling="mean",
                           optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5},
                           scheduler=None, loss=InfoNCE(temperature=0.05), **kwargs)


def _forward(module: EmbeddingModule, train: bool) -> torch.Tensor:
    module.train(train)
    inputs = module.embedder.input_builder(TEXTS, [None] * len(TEXTS), "query")
    with torch.no_grad():
        return module.embedder(inputs)


def test_dropout_zero_makes_train_mode_equal_eval_mode(minilm_path):
    module = _module(minilm_path, dropout=0.0)
    config = module.embedder.backbone.config
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.0
    assert all(m.p == 0.0 for m in module.modules() if isinstance(m, nn.Dropout))
    attention = module.embedder.backbone.encoder.layer[0].attention.self
    assert getattr(attention, "dropout_prob", 0.0) == 0.0
    torch.manual_seed(0)
    assert torch.equal(_forward(module, train=True), _forward(module, train=False))


def test_without_the_option_the_checkpoints_dropout_stays(minilm_path):
    module = _module(minilm_path)
    assert module.embedder.backbone.config.hidden_dropout_prob == pytest.approx(0.1)
    torch.manual_seed(0)
    a, b = _forward(module, train=True), _forward(module, train=True)
    assert not torch.equal(a, b)  # dropout is active in train mode
    assert torch.equal(_forward(module, train=False), _forward(module, train=False))


def test_set_dropout_leaves_lora_dropout_and_refuses_bad_values():
    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention_dropout = 0.2     # read by the forward as a probability
            self.dropout = nn.Dropout(0.3)   # a submodule, not a float attribute
            self.num_heads = 4               # an int: untouched

    model = nn.Module()
    model.attn = Attention()
    model.lora_dropout = nn.ModuleDict({"default": nn.Dropout(0.05)})
    assert set_dropout(model, 0.0) == 2
    assert model.attn.attention_dropout == 0.0 and model.attn.dropout.p == 0.0 and model.attn.num_heads == 4
    assert model.lora_dropout["default"].p == 0.05
    for bad in (1.0, -0.1, True, "0"):
        with pytest.raises(ValueError, match="model.dropout"):
            set_dropout(model, bad)


def test_the_config_option_reaches_the_module(compose_cfg, minilm_path):
    cfg = compose_cfg("train", ["model=minilm", f"model.path={minilm_path}", "model.dropout=0"])
    module = hydra.utils.instantiate(cfg.model, loss=None, _convert_="partial")
    assert module.embedder.backbone.config.hidden_dropout_prob == 0.0


# ----------------------------------------------------------------------------- the multimodal families
def _solid(color: str, size) -> Image.Image:
    im = Image.new("RGB", size, color)
    im.paste((10, 10, 10), (0, 0, size[0] // 3, size[1] // 3))
    return im


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "llava_onevision", "clip", "siglip"])
def test_multimodal_families_dropout_reaches_text_and_vision_and_zero_removes_it(family):
    """On tiny random models of the real architectures (their own configs carry no or little dropout): with
    every probability at 0.5, train-mode passes over an image-only row and over a text row are random (for the
    dual encoders CLIP and SigLIP the image-only row goes through the vision tower alone, so the setting reaches
    what both towers' forwards read); set back to 0, a train-mode pass over the same rows is the eval-mode pass
    exactly."""
    from embedders import Embedder

    torch.manual_seed(0)
    embedder = Embedder.build(family, config={})
    texts = ["<|image_1|>", "a red circle on the left"]
    images = [_solid("red", (56, 56)), None]

    def forward(train: bool, seed: int) -> torch.Tensor:
        embedder.train(train)
        torch.manual_seed(seed)
        with torch.no_grad():
            return embedder(embedder.input_builder(texts, images, "query")).float()

    assert set_dropout(embedder, 0.5) > 0
    noisy_a, noisy_b = forward(True, 1), forward(True, 2)
    for row, what in ((0, "the image row"), (1, "the text row")):
        assert not torch.allclose(noisy_a[row], noisy_b[row]), f"{family}: dropout 0.5 changed nothing on {what}"
    set_dropout(embedder, 0.0)
    assert torch.equal(forward(True, 1), forward(False, 1)), f"{family}: randomness left at dropout 0"
