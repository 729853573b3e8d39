"""Qwen3-VL-Embedding's input format for items that carry their task instruction apart (`Item.instruction`,
MMEB-V2 readers): the instruction is the system message and the user turn holds the visual, then the rest of the
text. Expected strings worked out by hand from QwenLM/Qwen3-VL-Embedding `src/models/qwen3_vl_embedding.py`
(`format_model_input`, lines 230-240: instruction stripped, "." added unless its last character is Unicode
punctuation, default "Represent the user's input."; lines 273-323: content = videos, images, then texts) rendered by
the Qwen3-VL chat template (`<|im_start|>role\\n...<|im_end|>\\n`, content items concatenated, video as
`<|vision_start|><|video_pad|><|vision_end|>`, `add_generation_prompt=True`)."""

from __future__ import annotations

import pytest
import torch

from datamodules.mmeb_v2_readers import compose
from datamodules.schema import Item
from embedders.backbones import get_family
from embedders.prompts import PRESETS, PromptFormat, Visual, format_text, system_instruction

QWEN3 = get_family("qwen3_vl")
PROMPT = PromptFormat.from_config("qwen3vl_embedding")
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def chat(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def fmt(item: Item, visual=None, side="query", prompt=PROMPT) -> str:
    return format_text(item.text, visual, side, prompt, QWEN3, item.instruction)


def test_text_query_and_video_target():
    inst = "Find a video that includes the following described scenes:"
    query = Item(compose(inst, "a man jumps"), instruction=inst)
    assert fmt(query) == chat("Find a video that includes the following described scenes:", "a man jumps")
    target = Item(compose("Understand the content of the provided video.", video=True), video="v.mp4",
                  instruction="Understand the content of the provided video.")
    assert fmt(target, Visual(videos=1), "target") == chat("Understand the content of the provided video.", VIDEO)


def test_visual_first_and_punctuation():
    qa = ("Given a video and a question, select the most accurate answer from the provided candidates. "
          "Return only the exact text of your chosen answer. Question: ")
    query = Item(compose(qa, "What is shown?\nA. A cat", video=True), video="v", instruction=qa)
    # "Question: " is stripped to "Question:" (ends with punctuation, nothing added); the double space of the
    # reference's composition does not reach the user turn.
    assert fmt(query, Visual(videos=1)) == chat(qa.strip(), VIDEO + "What is shown?\nA. A cat")
    inst = "Select the video clip that aligns with the given text and image:"
    query = Item(compose(inst, "the same dog", image=True), image="q.jpg", instruction=inst)
    assert fmt(query, Visual(images=1)) == chat(inst, IMAGE + "the same dog")
    breakfast = "Recognize the breakfast type that the person is cooking in the video. "
    query = Item(compose(breakfast, video=True), video="v", instruction=breakfast)
    assert fmt(query, Visual(videos=1)) == chat(breakfast.strip(), VIDEO)
    assert system_instruction("Represent this video") == "Represent this video."
    assert system_instruction("Was it a goal?") == "Was it a goal?"
    assert system_instruction("Find it：") == "Find it："  # full-width colon: Unicode punctuation (Po)
    assert system_instruction("  ") == ""
    assert fmt(Item(" a b", instruction=" ")) == chat("Represent the user's input.", "a b")


def test_items_without_instruction_and_other_prompts_are_unchanged():
    # no instruction: the default system message and the text as it is (MMEB v1 items)
    assert fmt(Item("<|image_1|>A photo of a cat"), True) == chat("Represent the user's input.",
                                                                  IMAGE + "A photo of a cat")
    inst = "Find a video that contains the following visual content:"
    item = Item(compose(inst, "cats"), instruction=inst)
    for name in ("plain", "vlm2vec", "hierarchical"):
        prompt = PRESETS[name]
        assert format_text(item.text, None, "query", prompt, QWEN3, inst) == \
            format_text(item.text, None, "query", prompt, QWEN3)
    with pytest.raises(ValueError, match="does not start with its instruction"):
        fmt(Item("cats " + inst, instruction=inst))
    with pytest.raises(ValueError, match="instruction_as_system needs a chat prompt"):
        PromptFormat(instruction_as_system=True)


def test_spec_keys():
    assert "instruction_as_system" not in PRESETS["plain"].to_dict()  # other prompts' specs are unchanged
    assert PROMPT.to_dict()["instruction_as_system"] is True
    assert PromptFormat.from_config(PROMPT.to_dict()) == PROMPT


def test_tokens_through_the_input_builder_and_the_eval_collator():
    """The tiny Qwen3-VL's tokenizer receives exactly that text, from the evaluation collator's items."""
    from datamodules.images import ImageLoader
    from embedders import Embedder
    from evaluation.encoding import _ItemCollator

    torch.manual_seed(0)
    emb = Embedder.build("qwen3_vl", config={}, prompt="qwen3vl_embedding")
    inst = "Find a video that contains the following visual content:"
    items = [Item(compose(inst, "a red circle"), instruction=inst), Item("a cat")]
    batch = _ItemCollator(emb.input_builder, "query")([(it, "D", k, "query", ImageLoader(None))
                                                       for k, it in enumerate(items)])
    tok = emb.processor.tokenizer  # the tiny tokenizer's vocabulary is small: compare token ids, not decoded text
    got = [ids[m.bool()].tolist() for ids, m in zip(batch["input_ids"], batch["attention_mask"])]
    want = [tok(t, add_special_tokens=False)["input_ids"] for t in (chat(inst, "a red circle"),
                                                                    chat("Represent the user's input.", "a cat"))]
    assert got == want
    assert want[0] != tok(chat("Represent the user's input.", items[0].text), add_special_tokens=False)["input_ids"]
    # Embedder.encode passes instructions the same way: the embedding of the collated batch, not of the text alone
    with torch.no_grad():
        batch_emb = emb(batch)
    got = emb.encode([it.text for it in items], instructions=[it.instruction for it in items])
    assert torch.allclose(got, batch_emb.float(), atol=1e-5)
    assert not torch.allclose(emb.encode([items[0].text]), got[:1], atol=1e-3)

