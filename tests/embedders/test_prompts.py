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
    p = PromptFormat.hierarchical()
    q_img = format_text("<|image_1|>\nWhat is it?", True, "query", p, QWEN)
    assert q_img == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
                     "<|vision_start|><|image_pad|><|vision_end|>\nWhat is it?\nRepresent the given text/image in one word."
                     "<|im_end|>\n<|im_start|>assistant\n")
    q_txt = format_text("a red circle", False, "query", p, QWEN)
    assert q_txt.endswith("a red circle\nRepresent the given text in one word.<|im_end|>\n<|im_start|>assistant\n")
    cand = format_text("a red circle", False, "target", p, QWEN)
    assert cand == (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\na red circle<|im_end|>\n"
                    "<|im_start|>assistant\n")


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
