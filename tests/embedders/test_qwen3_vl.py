"""Qwen3-VL family specifics (the shared family tests in test_families.py cover the rest): processor geometry,
right padding and the pooled position, the tiny config's interleaved M-RoPE and DeepStack, Qwen3-VL-Embedding's
input format, foreign checkpoints, and a save/reload that keeps the video settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from datamodules.video import VideoClip
from embedders import Embedder
from embedders.prompts import PromptFormat, format_text

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Embedder.build("qwen3_vl", config={}, image={"min_pixels": 96 * 96, "max_pixels": 96 * 96})


@pytest.fixture(scope="module")
def saved_qwen2(tmp_path_factory):
    torch.manual_seed(0)
    return Embedder.build("qwen2_vl", config={}).save_pretrained(tmp_path_factory.mktemp("q2") / "emb")


def _img(color, size=(40, 30)):
    return Image.new("RGB", size, color)


def test_processor_geometry_and_right_padding(tiny):
    texts = ["<|vision_start|><|image_pad|><|vision_end|>Represent the given image.", "a red circle"]
    inputs = tiny.family.prepare(tiny.processor, texts, [_img("red", (28, 28)), None], 512)
    # 96x96 -> a 6x6 grid of 16-px patches -> 9 tokens after 2x2 merging; patches of 3 x 2 x 16 x 16 values
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 6]]
    assert inputs["pixel_values"].shape == (36, 3 * 2 * 16 * 16)
    pad = tiny.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"][0] == pad).sum()) == 9
    assert inputs["mm_token_type_ids"][0].tolist().count(1) == 9
    mask = inputs["attention_mask"]
    assert mask[:, 0].all() and not mask[1, -1], "Qwen3-VL rows are right-padded (as Qwen3-VL-Embedding pads them)"
    # the pooled position is the last attended token of each row
    hidden = torch.arange(mask.shape[1], dtype=torch.float).expand(2, -1).unsqueeze(-1)
    from embedders.pooling import last_token_pool

    assert last_token_pool(hidden, mask).squeeze(-1).tolist() == (mask.sum(1) - 1).float().tolist()


def test_tiny_config_is_the_real_architecture(tiny):
    cfg = tiny.backbone.config
    text = cfg.text_config
    rope = text.rope_parameters
    assert rope["mrope_interleaved"] and sum(rope["mrope_section"]) == text.head_dim // 2
    assert cfg.vision_config.patch_size == 16 and cfg.vision_config.out_hidden_size == text.hidden_size
    assert len(tiny.backbone.visual.deepstack_merger_list) == len(cfg.vision_config.deepstack_visual_indexes) >= 1
    assert type(tiny.backbone).__name__ == "Qwen3VLModel"


def test_qwen3vl_embedding_input_format():
    """Qwen3VLEmbedder.format_model_input + the Qwen3-VL chat template (add_generation_prompt): system = the
    instruction, user = image then text, then the assistant prompt; the prompt config carries exactly that."""
    fields = OmegaConf.to_container(OmegaConf.load(CONF / "prompt" / "qwen3vl_embedding.yaml"))
    prompt = PromptFormat(**fields)
    from embedders.backbones import get_family

    family = get_family("qwen3_vl")
    query = format_text("<|image_1|>A photo of a cat", True, "query", prompt, family)
    assert query == ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n"
                     "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>A photo of a cat<|im_end|>\n"
                     "<|im_start|>assistant\n")
    target = format_text("a cat", False, "target", prompt, family)
    assert target == ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\na cat<|im_end|>\n"
                      "<|im_start|>assistant\n")


def test_profile_configs(compose_cfg):
    cfg = compose_cfg("train", ["experiment=qwen3vl_embedding_8b"])
    assert cfg.model.family == "qwen3_vl" and cfg.model.path == "Qwen/Qwen3-VL-Embedding-8B"
    assert cfg.model.pooling == "last" and cfg.model.normalize and cfg.model.max_length == 8192
    assert (cfg.model.image.min_pixels, cfg.model.image.max_pixels) == (4096, 1843200)
    video = cfg.model.image.video
    assert (video.sizing, video.min_pixels, video.max_pixels, video.total_pixels) == (
        "qwen_vl_utils", 128 * 32 * 32, 768 * 32 * 32, 10 * 768 * 32 * 32)
    assert cfg.prompt.name == "qwen3vl_embedding" and cfg.prompt.system == "Represent the user's input."
    base = compose_cfg("train", ["model=qwen3vl_2b"])
    assert base.model.image.video is None and base.model.config is None


def test_foreign_checkpoints_are_refused(tiny, saved_qwen2, tmp_path):
    with pytest.raises(ValueError, match=r"'qwen2_vl' checkpoint.*family 'qwen3_vl'.*belongs to family 'qwen2_vl'"):
        Embedder.from_pretrained(saved_qwen2, family="qwen3_vl")
    saved = tiny.save_pretrained(tmp_path / "q3")
    with pytest.raises(ValueError, match=r"'qwen3_vl' checkpoint.*family 'qwen2_vl'.*belongs to family 'qwen3_vl'"):
        Embedder.from_pretrained(saved, family="qwen2_vl")


def test_save_and_reload_keep_the_video_settings(tmp_path):
    torch.manual_seed(0)
    video = {"sizing": "qwen_vl_utils", "min_pixels": 2048, "max_pixels": 8192, "total_pixels": 40000,
             "frames_fps": 4.0}
    emb = Embedder.build("qwen3_vl", config={}, image={"video": video})
    saved = emb.save_pretrained(tmp_path / "emb")
    spec = json.loads((saved / "video_preprocessor_config.json").read_text())
    assert spec["video_processor_type"] == "Qwen3VLVideoProcessor" and spec["patch_size"] == 16
    again = Embedder.from_pretrained(saved)
    for key in ("sizing", "min_pixels", "max_pixels", "total_pixels", "frames_fps", "rule"):
        assert getattr(again.processor.video_processor, key) == getattr(emb.processor.video_processor, key)
    rng = np.random.default_rng(0)
    frames = tuple(Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)) for _ in range(4))
    clip = VideoClip(frames, (0, 1, 2, 3), None, 4, "x")
    texts = ["<|vision_start|><|video_pad|><|vision_end|> a clip"]
    before = emb(emb.family.prepare(emb.processor, texts, [clip], 512))
    after = again(again.family.prepare(again.processor, texts, [clip], 512))
    assert torch.allclose(before, after, atol=1e-6)
