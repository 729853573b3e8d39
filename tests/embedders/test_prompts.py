"""Placeholder replacement per family and the two prompts, as exact strings."""

from __future__ import annotations

import pytest

from embedders.backbones import get_family
from embedders.prompts import PromptFormat, format_text, replace_placeholder

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
    p = PromptFormat.plain()
    assert format_text("<|image_1|>\nRepresent the given image.", True, "query", p, QWEN) == (
        "<|image_pad|>\nRepresent the given image.")
    assert format_text("a red circle", False, "target", p, QWEN) == "a red circle"


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
    assert format_text(text, False, "query", plain, QWEN) == "<|image_pad|>\nFind a Wikipedia image that answers: who?"
    assert format_text(text, False, "query", plain, get_family("llava_onevision")) == text   # LLaVE: kept as text
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
    assert custom.chat and custom.query_suffix_text == "\nOne word:"
    with pytest.raises(ValueError, match="unknown field"):
        PromptFormat.from_config({"name": "plain", "sytem": "typo"})


def test_text_encoder_has_no_chat_layout():
    with pytest.raises(ValueError, match="has none; use prompt=plain"):
        format_text("x", False, "query", PromptFormat.hierarchical(), get_family("text_encoder"))
