"""Placeholder replacement per family and the prompts, as exact strings; conf/prompt files equal their presets; a
prompt of the user's own (new name, explicit fields) builds from a mapping and from Hydra overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from embedders.backbones import get_family
from embedders.prompts import PRESETS, PromptFormat, format_text, replace_placeholder

PROMPT_DIR = Path(__file__).resolve().parents[2] / "conf" / "prompt"

QWEN = get_family("qwen2_vl")
SYSTEM = "Given an image, summarize the provided image in one word. Given only text, describe the text in one word."


def test_placeholder_replaced_and_prepended():
    assert replace_placeholder("<|image_1|>\nRepresent it", True, "<|image_pad|>") == "<|image_pad|>\nRepresent it"
    assert replace_placeholder("Represent it", True, "<image>") == "<image>Represent it"
    assert replace_placeholder("just text", False, "<image>") == "just text"


def test_placeholder_errors():
    with pytest.raises(ValueError, match="no image"):
        replace_placeholder("<|image_1|> x", False, "<|image_pad|>")
    with pytest.raises(ValueError, match="takes no images"):
        replace_placeholder("<|image_1|> x", True, None)
    with pytest.raises(ValueError, match="2 image placeholders"):
        replace_placeholder("<|image_1|> <|image_1|>", True, "<image>")


def test_plain_prompt_qwen():
    # The default: Qwen's own image layout (its chat template writes <|vision_start|><|image_pad|><|vision_end|>), in
    # which embedlab's positions are transformers' (so the model ships exactly); vlm2vec keeps the bare token.
    p = PromptFormat.plain()
    assert p.image_layout == "wrapped"
    assert format_text("<|image_1|>\nRepresent the given image.", True, "query", p, QWEN) == (
        "<|vision_start|><|image_pad|><|vision_end|>\nRepresent the given image.")
    assert format_text("Represent it", True, "target", p, QWEN) == "<|vision_start|><|image_pad|><|vision_end|>Represent it"
    assert format_text("a red circle", False, "target", p, QWEN) == "a red circle"
    bare = PromptFormat.from_config("vlm2vec")
    assert format_text("<|image_1|>\nRepresent the given image.", True, "query", bare, QWEN) == (
        "<|image_pad|>\nRepresent the given image.")
    # families without a wrapped form: the same token in either layout
    llava = get_family("llava_onevision")
    assert format_text("<|image_1|> x", True, "query", p, llava) == format_text("<|image_1|> x", True, "query", bare,
                                                                               llava) == "<image> x"
    assert format_text("<|image_1|> x", True, "query", p, get_family("clip")) == " x"


def test_hierarchical_prompt_qwen_query_and_candidate():
    # Gen2Embed src/model_utils.py:244-251: bare image token in the user text, suffix by image presence.
    p = PromptFormat.hierarchical()
    q_img = format_text("<|image_1|>\nWhat is it?", True, "query", p, QWEN)
    assert q_img == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
                     "<|image_pad|>\nWhat is it?\nRepresent the given text/image in one word."
                     "<|im_end|>\n<|im_start|>assistant\n")
    q_txt = format_text("a red circle", False, "query", p, QWEN)
    assert q_txt.endswith("a red circle\nRepresent the given text in one word.<|im_end|>\n<|im_start|>assistant\n")
    cand = format_text("a red circle", False, "target", p, QWEN)
    assert cand == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\na red circle<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert p.target_as_query == ("RefCOCO-Matching",)
    wrapped = PromptFormat.from_config({"name": "hierarchical", "image_layout": "wrapped"})
    assert "<|vision_start|><|image_pad|><|vision_end|>\nWhat" in format_text("<|image_1|>\nWhat", True, "query",
                                                                                  wrapped, QWEN)


def test_placeholder_without_image_rules():
    """A text with <|image_1|> and no image (MMEB-train WebQA queries): per the prompt, else the family default."""
    text = "<|image_1|>\nFind a Wikipedia image that answers: who?"
    plain = PromptFormat.plain()
    assert format_text(text, False, "query", plain, QWEN) == text   # family default: kept as text
    assert format_text(text, False, "query", plain, get_family("llava_onevision")) == text   # LLaVE: kept as text
    # VLM2Vec v1 src/dataset.py:83,130 and Gen2Embed src/dataset.py:591: the bare token, image or not
    for name in ("vlm2vec", "hierarchical"):
        assert "<|image_pad|>\nFind a Wikipedia image" in format_text(text, False, "query", PromptFormat.from_config(name),
                                                                      QWEN)
    assert format_text(text, False, "query", plain, get_family("clip")) == "\nFind a Wikipedia image that answers: who?"
    for mode, expected in (("literal", text), ("strip", text.replace("<|image_1|>", ""))):
        p = PromptFormat.from_config({"name": "plain", "placeholder_without_image": mode})
        assert format_text(text, False, "query", p, QWEN) == expected
    with pytest.raises(ValueError, match="no image goes with it"):
        format_text(text, False, "query", PromptFormat.from_config({"name": "plain", "placeholder_without_image":
                                                                    "error"}), QWEN)
    token = PromptFormat.from_config({"name": "plain", "placeholder_without_image": "image_token"})
    with pytest.raises(ValueError, match="cannot embed an image token in a row without an image"):
        format_text(text, False, "query", token, get_family("llava_onevision"))


def test_llave_layout_image_first_then_newline_and_closing_assistant_turn():
    # LLaVE llava/eval/model_embed.py:45-67,96-98 and llava/train/train.py:567-640 (preprocess_qwen).
    llava = get_family("llava_onevision")
    p = PromptFormat.from_config({"name": "llave", "chat": True, "system": "You are a helpful assistant.",
                                  "assistant": "\n", "image_position": "first_line",
                                  "placeholder_without_image": "literal"})
    head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    tail = "<|im_end|>\n<|im_start|>assistant\n\n<|im_end|>\n"
    # the placeholder not at the front: moved there, rest stripped
    assert format_text("Find the caption: <|image_1|> ", True, "query", p, llava) == head + "<image>\nFind the caption:" + tail
    # already at the front: unchanged (no newline inserted, nothing stripped)
    assert format_text("<|image_1|> Represent it", True, "target", p, llava) == head + "<image> Represent it" + tail
    assert format_text("a dog", False, "target", p, llava) == head + "a dog" + tail
    assert format_text("<|image_1|>\nwho?", False, "query", p, llava) == head + "<|image_1|>\nwho?" + tail


def test_prompt_settings_are_checked():
    with pytest.raises(ValueError, match="image_layout must be one of"):
        PromptFormat.from_config({"name": "plain", "image_layout": "boxed"})
    with pytest.raises(ValueError, match="target_as_query must be a list"):
        PromptFormat.from_config({"name": "plain", "target_as_query": "RefCOCO-Matching"})
    p = PromptFormat.from_config({"name": "x", "chat": True, "target_as_query": ["A"]})
    assert PromptFormat.from_config(p.to_dict()) == p   # what Embedder.save_pretrained writes reads back


def test_prompt_from_config():
    assert PromptFormat.from_config("hierarchical") == PromptFormat.hierarchical()
    assert PromptFormat.from_config({"name": "plain"}) == PromptFormat.plain()
    custom = PromptFormat.from_config({"name": "hierarchical", "query_suffix_text": "\nOne word:"})
    assert custom.chat and custom.query_suffix_text == "\nOne word:" and custom.image_layout == "bare"
    with pytest.raises(ValueError, match="unknown field"):
        PromptFormat.from_config({"name": "plain", "sytem": "typo"})
    # a bare name is a preset lookup: an unknown one is refused rather than silently formatted as plain
    with pytest.raises(ValueError, match="unknown prompt 'gen2embed'; presets: .*a mapping of its fields"):
        PromptFormat.from_config("gen2embed")
    assert PromptFormat.from_config({"name": "plain", "image_layout": None}).image_layout == "wrapped"


@pytest.mark.parametrize("path", sorted(PROMPT_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_prompt_files_equal_their_presets(path):
    """Each conf/prompt file spells out every field (configs mirror code) and equals the preset of its name, so that
    `Embedder(prompt="<name>")`, a saved embedder.json and `prompt=<name>` in Hydra format alike."""
    cfg = yaml.safe_load(path.read_text())
    assert cfg["name"] == path.stem
    prompt = PromptFormat.from_config(cfg)
    assert prompt == PRESETS[path.stem]
    assert set(cfg) == set(prompt.to_dict())   # every field listed: any can be overridden (prompt.system=...)
    assert sorted(PRESETS) == sorted(p.stem for p in PROMPT_DIR.glob("*.yaml"))


def test_a_prompt_of_ones_own(compose_cfg):
    """A new name with explicit fields works: as a mapping (a conf/prompt/<new>.yaml, a saved embedder.json) and as
    Hydra overrides of the prompt group."""
    fields = {"name": "mine", "chat": True, "system": "Be brief.", "query_suffix_image": " [img]",
              "query_suffix_text": " [txt]", "assistant": "ok", "image_layout": "bare", "image_position": "first_line",
              "placeholder_without_image": "strip", "target_as_query": ["RefCOCO-Matching"]}
    prompt = PromptFormat.from_config(fields)
    assert prompt.to_dict() == fields
    assert PromptFormat.from_config(prompt.to_dict()) == prompt   # what Embedder.save_pretrained writes reads back
    assert format_text("Find it: <|image_1|>", True, "query", prompt, QWEN) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|image_pad|>\nFind it: [img]<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n")
    assert PromptFormat.from_config({"name": "mine"}) == PromptFormat(name="mine")   # unset fields: the defaults
    cfg = compose_cfg("train", ["prompt.name=mine", "prompt.chat=true", "prompt.system=Be brief.",
                                "prompt.image_layout=bare", "prompt.placeholder_without_image=strip"])
    from_hydra = PromptFormat.from_config(cfg.prompt)
    assert from_hydra == PromptFormat(name="mine", chat=True, system="Be brief.", image_layout="bare",
                                      placeholder_without_image="strip")


def test_text_encoder_has_no_chat_layout():
    with pytest.raises(ValueError, match="has none; use prompt=plain"):
        format_text("x", False, "query", PromptFormat.hierarchical(), get_family("text_encoder"))
