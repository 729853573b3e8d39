"""Every saved Embedder directory is a sentence-transformers model: `encode_query` / `encode_document` return the
vectors of `Embedder.encode(side="query")` / `side="target"` (max abs diff ≤ 1e-5, fp32) for the text-encoder family
(real all-MiniLM-L6-v2 weights) and the multimodal LM families (tiny Qwen2-VL, tiny LLaVA-OneVision), texts, images
and image+text inputs, plain and hierarchical prompts; and the chat template renders `format_text` exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from shipping import save_embedder

ROOT = Path(__file__).resolve().parents[2]

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
    from shipping.usage import EXAMPLE_DOCUMENTS, EXAMPLE_TEXT_QUERY

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


#: The default prompt, and the hierarchical prompt in the native (wrapped) image layout with the placeholder without
#: an image kept as text: both ship exactly.
NATIVE_PROMPTS = {"plain": "plain", "hierarchical-wrapped": {"name": "hierarchical", "image_layout": "wrapped",
                                                         "placeholder_without_image": "literal"}}


@pytest.mark.parametrize("prompt", NATIVE_PROMPTS.values(), ids=NATIVE_PROMPTS.keys())
def test_tiny_qwen2vl_texts_images_and_mixed(tmp_path, tiny_embedder, card_snippet, caplog, prompt):
    from shipping.usage import EXAMPLE_DOCUMENTS, EXAMPLE_QUERY_TEXT

    embedder = tiny_embedder("qwen2_vl", prompt)
    with caplog.at_level("WARNING", logger="embedders.saving"):
        out = save_embedder(embedder, tmp_path / "qwen")
    assert not caplog.records   # nothing to warn about: the stock loaders reproduce it
    assert "Differences from embedlab" not in (out / "README.md").read_text()
    model = _st(out)
    red, blue = _images()
    _assert_parity(embedder, model, TEXTS)
    _assert_parity(embedder, model, _mixed_inputs())
    # image-only inputs: sentence-transformers takes bare images; embedlab an empty text with the image
    _assert_parity(embedder, model, [{"text": "", "image": red}, {"text": "", "image": blue}], [red, blue])
    # The card's plain-transformers code too (image query, text documents).
    ns = card_snippet(out)
    query = embedder.encode([EXAMPLE_QUERY_TEXT], images=[red], side="query")
    assert (ns["query"] - query).abs().max().item() <= TOL
    assert (ns["docs"] - embedder.encode(list(EXAMPLE_DOCUMENTS), side="target")).abs().max().item() <= TOL
    if prompt != "plain":
        # Negative control: the query-only suffix makes the sides differ, so the parity above checked the task routing.
        q = torch.from_numpy(model.encode_query(TEXTS))
        d = torch.from_numpy(model.encode_document(TEXTS))
        assert (q - d).abs().max().item() > 1e-3


def test_bare_layout_ships_with_its_differences_stated_and_measured(tmp_path, tiny_embedder, card_snippet, caplog):
    """The hierarchical prompt as Gen2Embed formats it (bare <|image_pad|>, the placeholder without an image as that
    token): sentence-transformers gives other vectors for inputs with an image (transformers' image positions), and
    refuses a placeholder without an image. The card and a one-line warning say so; the card's transformers code
    reproduces embedlab; texts alone are exact."""
    from shipping.usage import EXAMPLE_DOCUMENTS, EXAMPLE_QUERY_TEXT

    embedder = tiny_embedder("qwen2_vl", "hierarchical")
    with caplog.at_level("WARNING", logger="embedders.saving"):
        out = save_embedder(embedder, tmp_path / "bare")
    (record,) = caplog.records
    assert "\n" not in record.getMessage()
    assert "bare <|image_pad|> image positions" in record.getMessage()
    assert "<|image_1|> without an image" in record.getMessage()
    card = (out / "README.md").read_text()
    assert "### Differences from embedlab" in card and "**Image positions.**" in card
    assert "except as listed under *Differences from embedlab*" in card and "tested to 1e-5" not in card
    assert "From Generator to Embedder" in card   # the method is named by title
    assert json.loads((out / "config_sentence_transformers.json").read_text())["prompts"]["query"]   # still written
    model = _st(out)
    red, blue = _images()
    _assert_parity(embedder, model, TEXTS)   # no image, no difference
    # With an image: the difference is there (positions), in both sides.
    for side, fn in (("query", model.encode_query), ("target", model.encode_document)):
        ours = _encode_ours(embedder, _mixed_inputs(), side)
        theirs = torch.from_numpy(fn(_mixed_inputs(), batch_size=2))
        assert (theirs - ours).abs().max().item() > 1e-4, side
    # The card's transformers code follows embedlab's position rule: exact.
    ns = card_snippet(out)
    assert (ns["query"] - embedder.encode([EXAMPLE_QUERY_TEXT], images=[red], side="query")).abs().max().item() <= TOL
    assert (ns["docs"] - embedder.encode(list(EXAMPLE_DOCUMENTS), side="target")).abs().max().item() <= TOL
    assert (ns["embed"]([ns["user"]({"type": "image", "image": blue}, {"type": "text", "text": "a blue one"})], "document")
            - embedder.encode(["a blue one"], images=[blue], side="target")).abs().max().item() <= TOL
    # The placeholder without an image: embedlab embeds the token, the stock processor refuses the text.
    webqa = "<|image_1|>\nFind a Wikipedia image that answers: who?"
    assert torch.isfinite(embedder.encode([webqa], side="query")).all()
    with pytest.raises(ValueError, match="no images were passed"):
        model.encode_query([webqa])


def test_image_resize_stated_and_reproduced(tmp_path, tiny_embedder, card_snippet, caplog):
    """A model that resizes images before the processor (model.image.resize, as the VLM2Vec and Gen2Embed profiles
    do): sentence-transformers given the original image differs, given the image resized as the card's `resize` does
    it matches; the card's transformers code matches."""
    image = {"min_pixels": 3136, "max_pixels": 12544,
             "resize": {"mode": "clamp", "max_aspect": 2, "min_side": 56, "max_side": 112, "resample": "lanczos"}}
    embedder = tiny_embedder("qwen2_vl", image=image)
    with caplog.at_level("WARNING", logger="embedders.saving"):
        out = save_embedder(embedder, tmp_path / "resized")
    (record,) = caplog.records
    assert "images resized first (aspect ratio clamped to 2" in record.getMessage()
    assert "**Image resizing.**" in (out / "README.md").read_text()
    model = _st(out)
    ns = card_snippet(out)
    wide = Image.new("RGB", (224, 56), (200, 30, 30))   # aspect 4 -> stretched to 2, then the long side to 112
    assert ns["resize"](wide).size == (112, 56)
    text = "<|image_1|>\nRepresent the given image."
    ours = embedder.encode([text], images=[wide], side="query")
    original = torch.from_numpy(model.encode_query([{"text": text, "image": wide}]))
    resized = torch.from_numpy(model.encode_query([{"text": text, "image": ns["resize"](wide)}]))
    assert (original - ours).abs().max().item() > 1e-4
    assert (resized - ours).abs().max().item() <= TOL
    snippet = ns["embed"]([ns["user"]({"type": "image", "image": ns["resize"](wide)}, {"type": "text", "text": text})],
                          "query")
    assert (snippet - ours).abs().max().item() <= TOL


def test_dual_encoder_card_sends_users_to_embedlab(tmp_path):
    """A family whose fusion no stock loader reproduces (CLIP: towers summed) gets no sentence-transformers config,
    no chat template and no stock-loader code in its card."""
    from embedders import Embedder

    torch.manual_seed(0)
    out = save_embedder(Embedder.build("clip", config={}), tmp_path / "clip")
    card = (out / "README.md").read_text()
    assert not (out / "modules.json").exists() and not (out / "chat_template.jinja").exists()
    assert "load it with embedlab" in card and "Embedder.from_pretrained" in card
    for absent in ("SentenceTransformer(", "apply_chat_template", "vllm", "vLLM"):
        assert absent not in card, absent


def test_tiny_llava_onevision_hierarchical(tmp_path, tiny_embedder):
    embedder = tiny_embedder("llava_onevision", "hierarchical")
    out = save_embedder(embedder, tmp_path / "llava")
    _assert_parity(embedder, _st(out), [*_mixed_inputs(), {"text": "a caption without image"}])


def test_truncate_dim_travels_in_the_config(tmp_path, tiny_embedder):
    from embedders import Embedder

    embedder = tiny_embedder("qwen2_vl", truncate_dim=32)
    out = save_embedder(embedder, tmp_path / "qwen32")
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


PROMPT_FILES = sorted(p.stem for p in (ROOT / "conf" / "prompt").glob("*.yaml"))
#: (text, has an image): placeholder in place / first / mid-text / absent, image-only, a placeholder without an
#: image, two placeholders (refused with an image), whitespace that first_line strips.
TEMPLATE_CASES = [("a caption", False), ("<|image_1|>\nRepresent the given image.", True), ("no placeholder", True),
                  ("Find the caption: <|image_1|> ", True), ("<|image_1|> Represent it", True), ("", True),
                  ("  padded text \n", True), ("<|image_1|>\nFind a Wikipedia image that answers: who?", False),
                  ("<|image_1|> and <|image_1|>", False), ("<|image_1|> and <|image_1|>", True)]


def _prompt_config(name):
    return yaml.safe_load((ROOT / "conf" / "prompt" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("fmt", [
    *PROMPT_FILES,
    {"name": "hierarchical", "system": None, "query_suffix_image": " [img]", "query_suffix_text": " [txt]"},
    {"name": "mine", "image_layout": "bare", "image_position": "first_line", "placeholder_without_image": "strip"},
    {"name": "mine", "chat": True, "system": "S.", "assistant": "ok", "placeholder_without_image": "image_token"},
    {"name": "mine", "placeholder_without_image": "error"},
], ids=lambda f: f if isinstance(f, str) else "-".join(f"{k}={v}" for k, v in f.items() if k != "name"))
@pytest.mark.parametrize("family", ["qwen2_vl", "llava_onevision"])
def test_chat_template_renders_format_text(family, fmt):
    """The shipped template against the code that formats training/evaluation inputs, for every prompt config and a
    few custom ones: both sides, with and without an image and a placeholder; what format_text refuses, the template
    refuses; a system message (sentence-transformers' prompt) replaces the system prompt."""
    from jinja2.exceptions import TemplateError
    from transformers.utils.chat_template_utils import render_jinja_template

    from embedders.backbones import get_family
    from embedders.prompts import PromptFormat, format_text
    from embedders.saving import chat_template

    fam = get_family(family)
    prompt = PromptFormat.from_config(_prompt_config(fmt) if isinstance(fmt, str) else fmt)
    template = chat_template(fam, prompt)
    refused = 0
    for text, has_image in TEMPLATE_CASES:
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": text}]
        for side, task in (("query", "query"), ("target", "document"), ("target", None)):
            kwargs = {"task": task} if task else {}
            try:
                want = format_text(text, has_image, side, prompt, fam)
            except ValueError:
                with pytest.raises(TemplateError):
                    render_jinja_template([[{"role": "user", "content": content}]], chat_template=template, **kwargs)
                refused += 1
                continue
            rendered, _ = render_jinja_template([[{"role": "user", "content": content}]], chat_template=template,
                                                **kwargs)
            assert rendered[0] == want, (text, has_image, side)
    assert 3 <= refused < 3 * len(TEMPLATE_CASES) / 2   # two placeholders with an image; never most of the cases
    if prompt.chat:
        system = [{"role": "system", "content": [{"type": "text", "text": "Custom instruction."}]}]
        rendered, _ = render_jinja_template([system + [{"role": "user", "content": "hi"}]], chat_template=template)
        kwargs = {} if prompt.assistant is None else {"assistant": prompt.assistant}
        assert rendered[0] == fam.chat("Custom instruction.", "hi", **kwargs) + prompt.suffix


def test_config_files_name_the_prompts_and_pooling(tmp_path, tiny_embedder):
    from embedders.prompts import HIERARCHICAL_SYSTEM

    out = save_embedder(tiny_embedder("qwen2_vl", "hierarchical"), tmp_path / "q")
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["prompts"] == {"query": HIERARCHICAL_SYSTEM, "document": HIERARCHICAL_SYSTEM}
    assert st["similarity_fn_name"] == "cosine" and "truncate_dim" not in st
    bert = json.loads((out / "sentence_bert_config.json").read_text())
    assert set(bert["modality_config"]) == {"text", "image", "message"}
    assert bert["processing_kwargs"] == {"text": {"truncation": False}}
    plain = save_embedder(tiny_embedder("qwen2_vl"), tmp_path / "p")
    assert json.loads((plain / "config_sentence_transformers.json").read_text())["prompts"] == {"query": "",
                                                                                                 "document": ""}
