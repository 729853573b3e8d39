"""The Embedder on a tiny random Qwen2-VL with the real image processor: processor outputs,
image-token expansion, left padding, the collator's chunking, save/load round trip."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from datamodules.collate import PairCollator
from datamodules.images import ImageLoader
from datamodules.schema import Item, TrainPair
from embedders import Embedder
from embedders.backbones import UnknownFamilyError

IMG = {"min_pixels": 84 * 84, "max_pixels": 84 * 84}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return Embedder.build("qwen2_vl", config={}, image=IMG)


def _img(color):
    return Image.new("RGB", (84, 84), color)


def test_processor_outputs_and_image_token_expansion(tiny):
    inputs = tiny.input_builder(["<|image_1|>\nRepresent the given image.", "a red circle"], [_img("red"), None], "query")
    assert set(inputs) >= {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"}
    # 84x84 -> a 6x6 grid of 14-px patches -> 9 tokens after 2x2 merging, all <|image_pad|>
    assert inputs["image_grid_thw"].tolist() == [[1, 6, 6]]
    assert inputs["pixel_values"].shape == (36, 3 * 2 * 14 * 14)
    pad_id = tiny.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((inputs["input_ids"][0] == pad_id).sum()) == 9
    assert int((inputs["input_ids"][1] == pad_id).sum()) == 0
    # left padding: the shorter (text-only) row is padded at the front
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[1, 0]


def test_embeddings_normalised_and_independent_of_batch_padding(tiny):
    texts = ["<|image_1|>\nRepresent the given image.", "a red circle on the left"]
    images = [_img("blue"), None]
    both = tiny.encode(texts, images)
    alone = torch.cat([tiny.encode(texts[:1], images[:1]), tiny.encode(texts[1:], images[1:])])
    assert torch.allclose(both.norm(dim=-1), torch.ones(2), atol=1e-5)
    # left padding + last-token pooling: a row's embedding does not depend on its batch mates
    assert torch.allclose(both, alone, atol=1e-4)


def test_save_and_reload(tiny, tmp_path):
    texts, images = ["<|image_1|>\nRepresent the given image.", "a green square"], [_img("green"), None]
    before = tiny.encode(texts, images)
    tiny.save_pretrained(tmp_path / "emb")
    again = Embedder.from_pretrained(tmp_path / "emb")
    assert torch.allclose(before, again.encode(texts, images), atol=1e-6)
    assert again.prompt == tiny.prompt and again.pooling == "last"
    # an ordinary HF directory: transformers alone reloads the backbone
    from transformers import AutoModel

    assert type(AutoModel.from_pretrained(tmp_path / "emb")).__name__ == "Qwen2VLModel"


def test_a_version_1_directory_formats_its_inputs_as_when_it_was_saved(tiny, tmp_path):
    """Directories saved before prompts recorded their image layout (format 1) load with the behaviour they were
    trained with: the bare image token for a plain prompt and an error for a placeholder without an image,
    not today's defaults (wrapped layout, placeholder kept as text)."""
    import json

    from embedders.prompts import format_text

    tiny.save_pretrained(tmp_path / "emb")
    spec_file = tmp_path / "emb" / "embedder.json"
    spec = json.loads(spec_file.read_text())
    assert spec["format_version"] == 2 and spec["prompt"]["image_layout"] == "wrapped"
    for key in ("image_layout", "placeholder_without_image", "image_position", "assistant", "target_as_query"):
        spec["prompt"].pop(key)
    spec["format_version"] = 1
    spec_file.write_text(json.dumps(spec))
    old = Embedder.from_pretrained(tmp_path / "emb")
    text = format_text("<|image_1|>\nRepresent the given image.", True, "query", old.prompt, old.family)
    assert text == "<|image_pad|>\nRepresent the given image."
    with pytest.raises(ValueError, match="no image goes with it"):
        format_text("<|image_1|>\nWhat is this?", False, "query", old.prompt, old.family)
    current = Embedder.from_pretrained(tmp_path / "emb", prompt={**spec["prompt"], "image_layout": "wrapped"})
    assert format_text("<|image_1|>\nx", True, "query", current.prompt, current.family) == \
        "<|vision_start|><|image_pad|><|vision_end|>\nx"
    spec["format_version"] = 3
    spec_file.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="newer embedlab"):
        Embedder.from_pretrained(tmp_path / "emb")


def test_collator_chunks_per_example(tiny, tmp_path):
    for i, c in enumerate(["red", "blue", "green"]):
        _img(c).save(tmp_path / f"{i}.png")
    pairs = [TrainPair("S", i, Item("<|image_1|>\nRepresent the given image.", f"{i}.png"), Item(f"a {c} one"),
                       (Item("<|image_1|>\nneg", f"{(i + 1) % 3}.png"),) if i == 0 else ())
             for i, c in enumerate(["red", "blue", "green"])]
    batch = PairCollator(tiny.input_builder, ImageLoader(tmp_path), chunk_size=2)(pairs)
    assert [c["input_ids"].shape[0] for c in batch["query"]] == [2, 1]
    assert [c["image_grid_thw"].shape[0] for c in batch["query"]] == [2, 1]
    assert [c["pixel_values"].shape[0] for c in batch["query"]] == [72, 36]
    assert [c["input_ids"].shape[0] for c in batch["target"]] == [2, 2]  # 3 positives + 1 negative
    assert batch["target_keys"].shape == (4,) and batch["ids"] == ["S/0", "S/1", "S/2"]
    whole = PairCollator(tiny.input_builder, ImageLoader(tmp_path))(pairs)
    chunked = torch.cat([tiny(c) for c in batch["query"]])
    assert torch.allclose(chunked, tiny(whole["query"][0]), atol=1e-5)


def test_unknown_family():
    with pytest.raises(UnknownFamilyError, match="available"):
        Embedder.build("qwen9_vl", config={})


def test_tiny_vocabulary_covers_bundled_texts():
    from datamodules.builders.bundled import bundled_vocabulary
    from embedders.tiny import tiny_qwen_tokenizer

    tok = tiny_qwen_tokenizer()
    unk = [w for w in bundled_vocabulary() if tok.convert_tokens_to_ids(w) == tok.unk_token_id]
    assert not unk, f"words of the bundled dataset missing from embedders/assets/tiny_vocab.txt: {unk}"
