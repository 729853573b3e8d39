"""Every saved Embedder directory is a sentence-transformers model: `encode_query` / `encode_document` return the
vectors of `Embedder.encode(side="query")` / `side="target"` (max abs diff ≤ 1e-5, fp32) for the text-encoder family
(real all-MiniLM-L6-v2 weights) and the multimodal LM families (tiny Qwen2-VL, tiny LLaVA-OneVision), texts, images
and image+text inputs, plain and hierarchical prompts; and the chat template renders `format_text` exactly."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

TOL = 1e-5
TEXTS = ["a red circle on the left and a blue square on the right", "What color is the triangle?", "short"]


def _images():
    return Image.new("RGB", (84, 84), "red"), Image.new("RGB", (56, 112), (20, 40, 200))


def _mixed_inputs():
    red, blue = _images()
    return [
        {"text": "<|image_1|>\nRepresent the given image with the following question: What color is it?", "image": red},
        {"text": "a blue one", "image": blue},  # no placeholder: the image token is prepended
        {"text": "<|image_1|>\nRepresent the given image.", "image": blue},
    ]


def _st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


def _encode_ours(embedder, items, side):
    texts = [i["text"] if isinstance(i, dict) else i for i in items]
    images = [i.get("image") if isinstance(i, dict) else None for i in items]
    return embedder.encode(texts, images=images, side=side)


def _assert_parity(embedder, model, items, st_items=None):
    st_items = items if st_items is None else st_items
    for side, fn in (("query", model.encode_query), ("target", model.encode_document)):
        ours = _encode_ours(embedder, items, side)
        theirs = torch.from_numpy(fn(st_items, batch_size=2))
        assert theirs.shape == ours.shape
        assert (theirs - ours).abs().max().item() <= TOL, side


def test_minilm_directory_loads_in_sentence_transformers(minilm_export, minilm_path, card_snippet):
    from embedders import Embedder
    from embedders.shipping import EXAMPLE_DOCUMENTS, EXAMPLE_TEXT_QUERY

    embedder, out = minilm_export
    model = _st(out)
    long_text = "word " * 400  # beyond max_length: both truncate at 256 tokens
    _assert_parity(embedder, model, [*TEXTS, long_text])
    reloaded = Embedder.from_pretrained(out)  # and embedlab's own reload is unchanged
    assert torch.equal(reloaded.encode(TEXTS), embedder.encode(TEXTS))
    # The published model (mean pooling + Normalize) gives the same vectors: the export changed nothing.
    original = torch.from_numpy(_st(minilm_path).encode(TEXTS))
    assert (original - embedder.encode(TEXTS)).abs().max().item() <= TOL
    # The card's plain-transformers code too.
    ns = card_snippet(out)
    assert (ns["query"] - embedder.encode([EXAMPLE_TEXT_QUERY], side="query")).abs().max().item() <= TOL
    assert (ns["docs"] - embedder.encode(list(EXAMPLE_DOCUMENTS), side="target")).abs().max().item() <= TOL


@pytest.mark.parametrize("prompt", ["plain", "hierarchical"])
def test_tiny_qwen2vl_texts_images_and_mixed(tmp_path, tiny_embedder, prompt):
    embedder = tiny_embedder("qwen2_vl", prompt)
    out = embedder.save_pretrained(tmp_path / "qwen")
    model = _st(out)
    red, blue = _images()
    _assert_parity(embedder, model, TEXTS)
    _assert_parity(embedder, model, _mixed_inputs())
    # image-only inputs: sentence-transformers takes bare images; embedlab an empty text with the image
    _assert_parity(embedder, model, [{"text": "", "image": red}, {"text": "", "image": blue}], [red, blue])
    if prompt == "hierarchical":
        # Negative control: the query-only suffix makes the sides differ, so the parity above checked the task routing.
        q = torch.from_numpy(model.encode_query(TEXTS))
        d = torch.from_numpy(model.encode_document(TEXTS))
        assert (q - d).abs().max().item() > 1e-3


def test_tiny_llava_onevision_hierarchical(tmp_path, tiny_embedder):
    embedder = tiny_embedder("llava_onevision", "hierarchical")
    out = embedder.save_pretrained(tmp_path / "llava")
    _assert_parity(embedder, _st(out), [*_mixed_inputs(), {"text": "a caption without image"}])


def test_truncate_dim_travels_in_the_config(tmp_path, tiny_embedder):
    from embedders import Embedder

    embedder = tiny_embedder("qwen2_vl", truncate_dim=32)
    out = embedder.save_pretrained(tmp_path / "qwen32")
    assert json.loads((out / "config_sentence_transformers.json").read_text())["truncate_dim"] == 32
    model = _st(out)
    items = _mixed_inputs()
    for side, fn in (("query", model.encode_query), ("target", model.encode_document)):
        ours = _encode_ours(embedder, items, side)
        # sentence-transformers truncates after its Normalize module: ask it to re-normalise
        theirs = torch.from_numpy(fn(items, normalize_embeddings=True))
        assert ours.shape == theirs.shape == (3, 32)
        assert (theirs - ours).abs().max().item() <= TOL
    # Independent: the first 32 dims of the full embedding, re-normalised
    full = _encode_ours(Embedder.from_pretrained(out, truncate_dim=None), items, "query")
    ref = torch.nn.functional.normalize(full[:, :32], dim=-1)
    assert (ref - _encode_ours(embedder, items, "query")).abs().max().item() <= TOL


@pytest.mark.parametrize("fmt", [
    "plain", "hierarchical",
    {"name": "hierarchical", "system": None, "query_suffix_image": " [img]", "query_suffix_text": " [txt]"},
])
@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_chat_template_renders_format_text(family, fmt):
    """The shipped template against the code that formats training/evaluation inputs, both sides, with and without
    an image and a placeholder; a system message (sentence-transformers' prompt) replaces the system prompt."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from embedders.backbones import get_family
    from embedders.prompts import PromptFormat, format_text
    from embedders.shipping import chat_template

    fam, prompt = get_family(family), PromptFormat.from_config(fmt)
    template = chat_template(fam, prompt)
    cases = [("a caption", False), ("<|image_1|>\nRepresent the given image.", True), ("no placeholder", True)]
    for text, has_image in cases:
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
        for side, task in (("query", "query"), ("target", "document"), ("target", None)):
            kwargs = {"task": task} if task else {}
            rendered, _ = render_jinja_template([[{"role": "user", "content": content}]], chat_template=template,
                                                **kwargs)
            assert rendered[0] == format_text(text, has_image, side, prompt, fam), (text, side)
    if prompt.chat:
        system = [{"role": "system", "content": [{"type": "text", "text": "Custom instruction."}]}]
        rendered, _ = render_jinja_template([system + [{"role": "user", "content": "hi"}]], chat_template=template)
        assert rendered[0] == fam.chat("Custom instruction.", "hi")


def test_config_files_name_the_prompts_and_pooling(tmp_path, tiny_embedder):
    from embedders.prompts import HIERARCHICAL_SYSTEM

    out = tiny_embedder("qwen2_vl", "hierarchical").save_pretrained(tmp_path / "q")
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": HIERARCHICAL_SYSTEM, "document": HIERARCHICAL_SYSTEM}
    assert st["similarity_fn_name"] == "cosine" and "truncate_dim" not in st
    bert = json.loads((out / "sentence_bert_config.json").read_text())
    assert set(bert["modality_config"]) == {"text", "image", "message"}
    assert bert["processing_kwargs"] == {"text": {"truncation": False}}
    plain = tiny_embedder("qwen2_vl").save_pretrained(tmp_path / "p")
    assert json.loads((plain / "config_sentence_transformers.json").read_text())["prompts"] == {"query": "",
                                                                                                 "document": ""}
