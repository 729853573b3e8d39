"""Formatting of video and multi-page items: `<|video_1|>` and `<|image_1|>`..`<|image_n|>` become the family's
tokens in the prompt's layout, prepended (VLM2Vec's " " separator) when a text has none; refusals by name."""

from __future__ import annotations

import pytest

from embedders.backbones import get_family
from embedders.prompts import PromptFormat, Visual, describe_visual, format_text

QWEN2, QWEN3 = get_family("qwen2_vl"), get_family("qwen3_vl")
WRAPPED_VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
WRAPPED_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def test_video_placeholder_in_both_layouts():
    plain, bare = PromptFormat.plain(), PromptFormat.from_config("vlm2vec")
    assert format_text("<|video_1|> Recognize it.", Visual(videos=1), "query", plain, QWEN2) == \
        WRAPPED_VIDEO + " Recognize it."
    assert format_text("<|video_1|> Recognize it.", Visual(videos=1), "query", bare, QWEN2) == "<|video_pad|> Recognize it."
    # no placeholder: prepended with the reference's separator (process_input_text: video_token + " " + prompt)
    assert format_text("Recognize it.", Visual(videos=1), "target", bare, QWEN3) == "<|video_pad|> Recognize it."


def test_pages_placeholders():
    plain = PromptFormat.plain()
    assert format_text("<|image_1|> and <|image_2|> pages", Visual(images=2), "target", plain, QWEN3) == \
        f"{WRAPPED_IMAGE} and {WRAPPED_IMAGE} pages"
    assert format_text("two pages", Visual(images=2), "target", plain, QWEN3) == WRAPPED_IMAGE * 2 + " two pages"
    with pytest.raises(ValueError, match=r"needs the placeholders <\|image_1\|>..<\|image_2\|> once each"):
        format_text("<|image_1|> only one", Visual(images=2), "target", plain, QWEN3)


def test_chat_layout_and_refusals():
    prompt = PromptFormat.from_config("qwen3vl_embedding")
    text = format_text("<|video_1|> What happens?", Visual(videos=1), "query", prompt, QWEN3)
    assert text == ("<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
                    f"{WRAPPED_VIDEO} What happens?<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="family 'llava_onevision' takes no videos"):
        format_text("<|video_1|> x", Visual(videos=1), "query", PromptFormat.plain(), get_family("llava_onevision"))
    with pytest.raises(ValueError, match="takes at most 1 image"):
        format_text("x", Visual(images=2), "query", PromptFormat.plain(), get_family("llava_onevision"))


def test_describe_visual():
    from PIL import Image

    from datamodules.video import VideoClip

    im = Image.new("RGB", (4, 4))
    clip = VideoClip((im,), (0,), None, 1, "x")
    assert [describe_visual(v) for v in (None, False, True, im, [im, im], clip)] == [
        Visual(), Visual(), Visual(images=1), Visual(images=1), Visual(images=2), Visual(videos=1)]
