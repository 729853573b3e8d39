"""Packed sequences (`model.packed`, embedders/packing.py): for tiny Qwen2-VL (left padding, M-RoPE), Qwen3-VL (right
padding, interleaved M-RoPE, DeepStack) and LLaVA-OneVision (left padding, 1-D RoPE), with image and text rows of
different lengths mixed, the packed forward gives the padded forward's embeddings, loss and parameter gradients
(fp32, 1e-5); without the per-row position restart it does not (the check can fail); bf16 autocast runs close to
the padded result; unsupported attention implementations and families are refused."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from embedders import Embedder, packing
from embedders.strategies import fsdp_units
from losses import InfoNCE

FAMILIES = ("qwen2_vl", "qwen3_vl", "llava_onevision")


def _img(color, size=(40, 32)):
    im = Image.new("RGB", size, color)
    im.paste((10, 10, 10), (0, 0, size[0] // 3, size[1] // 3))
    return im


#: Queries and targets, images and text mixed, lengths from one token to a long row.
QUERIES = (["<|image_1|> a green thing", "a red circle", "<|image_1|>", "the blue square on the left of the big house"],
           [_img("green"), None, _img("blue", (28, 56)), None])
TARGETS = (["circle", "<|image_1|> red", "a green thing on the right", "<|image_1|> the blue square"],
           [None, _img("red", (56, 28)), None, _img("blue")])


@pytest.fixture(scope="module")
def embedders():
    built = {}

    def get(family):
        if family not in built:
            torch.manual_seed(0)
            built[family] = Embedder.build(family, config={})
        built[family].packed = False
        built[family].uniform_trace = False
        built[family].eval()
        return built[family]

    return get


def _embed(embedder, inputs, packed):
    embedder.packed = packed
    try:
        return embedder(inputs)
    finally:
        embedder.packed = False


def padding_share(*masks) -> float:
    return 1 - sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("family", FAMILIES)
def test_packed_embeddings_equal_padded(embedders, family, pooling):
    embedder = embedders(family)
    embedder.pooling = pooling
    try:
        for texts, images in (QUERIES, TARGETS):
            inputs = embedder.input_builder(texts, images, "query")
            lengths = inputs["attention_mask"].sum(1)
            assert lengths.min() < lengths.max()  # rows of different lengths: padding to pack away
            with torch.no_grad():
                torch.testing.assert_close(_embed(embedder, inputs, True), _embed(embedder, inputs, False),
                                           rtol=0, atol=1e-5)
    finally:
        embedder.pooling = embedder.family.default_pooling


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_equal_padded(embedders, family):
    embedder = embedders(family)
    embedder.train()  # tiny configs have no dropout: train mode changes nothing but the mode
    queries = embedder.input_builder(*QUERIES, "query")
    targets = embedder.input_builder(*TARGETS, "target")
    loss_fn = InfoNCE(temperature=0.05)

    def step(packed):
        embedder.zero_grad(set_to_none=True)
        loss = loss_fn(_embed(embedder, queries, packed), _embed(embedder, targets, packed))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}

    padded_loss, padded = step(False)
    packed_loss, packed = step(True)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=1e-5)
    assert packed.keys() == padded.keys() and len(padded) > 10
    assert any("visual" in n or "vision" in n for n in padded)  # the image rows reach the vision tower
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], rtol=1e-4, atol=1e-5, msg=name)
    print(f"{family}: padding share {padding_share(queries['attention_mask'], targets['attention_mask']):.2f}")


@pytest.mark.parametrize("leak", ["no_block_mask", "no_restart"])
@pytest.mark.parametrize("family", FAMILIES)
def test_without_row_isolation_rows_see_each_other(embedders, family, leak, monkeypatch):
    """The equality above can fail: with transformers' per-row mask switched off (`no_block_mask`: one causal sequence
    over the whole batch, positions unchanged), or text positions that run on across rows instead of restarting
    (`no_restart`, M-RoPE families: transformers then finds no packed rows), the embeddings move."""
    from transformers import masking_utils

    embedder = embedders(family)
    if leak == "no_restart" and embedder.family.packed_positions != "mrope":
        pytest.skip("1-D RoPE: the text positions are the model's positions (the no_block_mask case covers it)")
    inputs = embedder.input_builder(*QUERIES, "query")
    real = packing.pack_index

    def run_on(mask):
        index, _ = real(mask)
        return index, torch.arange(index.numel(), device=index.device)

    with torch.no_grad():
        padded = _embed(embedder, inputs, False)
        if leak == "no_block_mask":
            monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
        else:
            monkeypatch.setattr(packing, "pack_index", run_on)
        leaky = _embed(embedder, inputs, True)
    # The first row sees no other row in either layout; every later row does in the leaky one.
    torch.testing.assert_close(leaky[0], padded[0], rtol=0, atol=1e-5)
    assert (leaky[1:] - padded[1:]).abs().amax(-1).min() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_one_row_and_one_token_rows(embedders, family):
    embedder = embedders(family)
    tokenizer = embedder.processor.tokenizer
    word = next(w for w in ("a", "circle", "red") if len(tokenizer(w, add_special_tokens=True)["input_ids"]) == 1)
    for texts, images in (([word], [None]), (QUERIES[0][:1], QUERIES[1][:1]), ([word, word, "a red circle"],
                                                                               [None, None, None])):
        inputs = embedder.input_builder(texts, images, "query")
        with torch.no_grad():
            torch.testing.assert_close(_embed(embedder, inputs, True), _embed(embedder, inputs, False),
                                       rtol=0, atol=1e-5)


def test_qwen2vl_stray_image_tokens_pack(embedders):
    """A text-only row holding `<|image_pad|>` as a token goes through the family's own scatter forward."""
    embedder = embedders("qwen2_vl")
    inputs = embedder.input_builder(["<|image_1|> a green thing", "<|image_pad|> a red circle"], [_img("green"), None],
                                    "query")
    assert inputs["stray_image_tokens"]
    with torch.no_grad():
        torch.testing.assert_close(_embed(embedder, inputs, True), _embed(embedder, inputs, False), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_multi_vector_token_states_equal_padded(embedders, family):
    embedder = embedders(family)
    inputs = embedder.input_builder(*TARGETS, "target")
    with torch.no_grad():
        padded = embedder.family.encode_inputs(embedder.backbone, inputs, "multi_vector")
        with packing.packed_sequences(embedder.backbone, embedder.family.packed_positions):
            packed = embedder.family.encode_inputs(embedder.backbone, inputs, "multi_vector")
    torch.testing.assert_close(packed, padded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradcache_chunks_pack_separately(embedders, family):
    embedder = embedders(family)
    texts, images = QUERIES
    whole = embedder.input_builder(texts, images, "query")
    with torch.no_grad():
        chunks = [_embed(embedder, embedder.input_builder(texts[s:s + 2], images[s:s + 2], "query"), True)
                  for s in (0, 2)]
        torch.testing.assert_close(torch.cat(chunks), _embed(embedder, whole, False), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_trace_holds_packed(embedders, family):
    """FSDP: a packed call runs the same units in the same order as a padded one, text-only rows included."""
    embedder = embedders(family)
    units = fsdp_units(embedder)
    index = {id(u): i for i, u in enumerate(units)}
    inputs = embedder.input_builder(["a red circle", "the blue square on the left"], [None, None], "query")
    embedder.uniform_trace = True
    orders, embs = {}, {}
    for packed in (False, True):
        order: list[int] = []
        hooks = [u.register_forward_pre_hook(lambda m, a, order=order: order.append(index[id(m)])) for u in units]
        try:
            with torch.no_grad():
                embs[packed] = _embed(embedder, inputs, packed)
        finally:
            for h in hooks:
                h.remove()
        orders[packed] = order
    assert orders[True] == orders[False] and orders[True]
    torch.testing.assert_close(embs[True], embs[False], rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_autocast_is_close(embedders, family):
    embedder = embedders(family)
    inputs = embedder.input_builder(*QUERIES, "query")
    with torch.no_grad():
        exact = _embed(embedder, inputs, False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            padded = _embed(embedder, inputs, False).float()
            packed = _embed(embedder, inputs, True).float()
    assert torch.isfinite(packed).all()
    # bf16 rounding of unit vectors: both layouts stay as close to fp32 as each other
    assert (packed - exact).abs().max() < 0.05 and (padded - exact).abs().max() < 0.05
    assert (packed - padded).abs().max() < 0.05


@pytest.mark.parametrize("family", FAMILIES)
def test_eager_attention_packs_too(family):
    torch.manual_seed(0)
    embedder = Embedder.build(family, config={}, attn_implementation="eager")  # model.attn_implementation
    assert packing.language_model(embedder.backbone).config._attn_implementation == "eager"
    embedder.eval()
    inputs = embedder.input_builder(*QUERIES, "query")
    with torch.no_grad():
        torch.testing.assert_close(_embed(embedder, inputs, True), _embed(embedder, inputs, False), rtol=0, atol=1e-5)


def test_unsupported_attention_is_refused(embedders):
    embedder = embedders("qwen3_vl")
    config = packing.language_model(embedder.backbone).config
    saved = config._attn_implementation
    config._attn_implementation = "flex_attention"
    try:
        with pytest.raises(ValueError, match="attention implementation to be one of eager, sdpa.*flex_attention"):
            Embedder("qwen3_vl", embedder.backbone, embedder.processor, packed=True)
        embedder.packed = True
        with pytest.raises(ValueError, match="flex_attention"):
            embedder(embedder.input_builder(["a red circle"], [None], "query"))
    finally:
        embedder.packed = False
        config._attn_implementation = saved


def test_families_without_a_decoder_are_refused():
    with pytest.raises(ValueError, match="family 'clip' cannot run packed rows"):
        Embedder.build("clip", config={}, packed=True)


def test_packed_is_a_runtime_option(embedders, tmp_path):
    """Not written to embedder.json (the same embeddings; whether it runs depends on where the model is loaded)."""
    embedder = embedders("llava_onevision")
    assert "packed" not in embedder.spec()


def test_module_threads_the_option():
    from embedders import EmbeddingModule

    module = EmbeddingModule(family="llava_onevision", config={}, packed=True, attn_implementation="eager")
    assert module.embedder.packed and module.hparams.packed
    assert packing.language_model(module.embedder.backbone).config._attn_implementation == "eager"


def test_lora_and_gradient_checkpointing_pack():
    """A LoRA-wrapped backbone (the language model found through peft) with activation checkpointing: the same loss
    and LoRA gradients (Qwen3-VL: DeepStack and right padding; the lookup is the same for every family)."""
    family = "qwen3_vl"
    torch.manual_seed(0)
    embedder = Embedder.build(family, config={}, lora={"r": 4, "alpha": 8}, gradient_checkpointing=True)
    embedder.train()
    queries, targets = embedder.input_builder(*QUERIES, "query"), embedder.input_builder(*TARGETS, "target")
    results = []
    for packed in (False, True):
        embedder.zero_grad(set_to_none=True)
        loss = InfoNCE(temperature=0.05)(_embed(embedder, queries, packed), _embed(embedder, targets, packed))
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in embedder.named_parameters()
                                        if p.grad is not None}))
    (padded_loss, padded), (packed_loss, packed) = results
    torch.testing.assert_close(packed_loss, padded_loss, rtol=0, atol=1e-5)
    assert packed.keys() == padded.keys() and all("lora_" in n for n in padded)
    for name in padded:
        torch.testing.assert_close(packed[name], padded[name], rtol=1e-4, atol=1e-5, msg=name)


def test_dense_mask_attention_is_warned_about(caplog):
    """eager/sdpa isolate packed rows with an [N, N] mask (attention over all N tokens of a call): said at build."""
    assert packing.dense_mask_warning("flash_attention_2") is None
    assert "N^2" in packing.dense_mask_warning("sdpa")
    with caplog.at_level("WARNING", logger="embedders.embedder"):
        Embedder.build("llava_onevision", config={}, packed=True, attn_implementation="eager")
    assert any("flash_attention_2 (varlen)" in r.getMessage() for r in caplog.records)
