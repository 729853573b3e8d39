"""FSDP's uniform module trace (`Embedder.uniform_trace`): whatever a chunk's rows — text only, images only, mixed,
stray image tokens, a dual encoder's single modality — one call runs the same FSDP units in the same order and
gives gradients to the same parameters (ranks all-gather and reduce-scatter the same tensors), while the embeddings
and every real gradient equal the plain computation (the dummy towers enter times 0). Single process; the ranks
themselves are in tests/precision/test_fsdp_parity.py."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from embedders import Embedder
from embedders.strategies import fsdp_units

FAMILIES = ("qwen2_vl", "qwen3_vl", "llava_onevision", "clip", "siglip")


def _img(color, size=(40, 32)):
    im = Image.new("RGB", size, color)
    im.paste((10, 10, 10), (0, 0, size[0] // 3, size[1] // 3))
    return im


def _batches(family: str) -> dict[str, tuple[list[str], list]]:
    out = {
        "text": (["a red circle", "the blue square on the left"], [None, None]),
        "image": (["<|image_1|>\nRepresent the image.", "<|image_1|>"], [_img("red"), _img("blue", (28, 56))]),
        "mixed": (["<|image_1|> a green thing", "a red circle"], [_img("green"), None]),
    }
    if family in ("clip", "siglip"):
        out["image"] = (["<|image_1|>", "<|image_1|>"], out["image"][1])  # image only: no text tower rows
    if family == "qwen2_vl":
        # a text-only row holding the image token as an ordinary token beside a row with an image
        out["stray"] = (["<|image_1|> a green thing", "<|image_pad|> a red circle"], [_img("green"), None])
    return out


@pytest.fixture(scope="module")
def embedders():
    built = {}

    def get(family):
        if family not in built:
            torch.manual_seed(0)
            built[family] = Embedder.build(family, config={})
            built[family].train()
        return built[family]

    return get


def _trace(embedder: Embedder, inputs: dict) -> tuple[list[int], set[str], torch.Tensor]:
    """The FSDP units the call ran (in order), the parameters that got a gradient, and the embeddings."""
    units = fsdp_units(embedder)
    index = {id(u): i for i, u in enumerate(units)}
    order: list[int] = []
    hooks = [u.register_forward_pre_hook(lambda m, a: order.append(index[id(m)])) for u in units]
    try:
        embedder.zero_grad(set_to_none=True)
        emb = embedder(inputs)
        (emb * torch.linspace(-1, 1, emb.numel()).view_as(emb)).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    grads = {n for n, p in embedder.named_parameters() if p.grad is not None}
    return order, grads, emb.detach()


@pytest.mark.parametrize("family", FAMILIES)
def test_every_call_runs_the_same_units_and_reaches_the_same_parameters(embedders, family):
    embedder = embedders(family)
    build = embedder.input_builder
    traces = {}
    for kind, (texts, images) in _batches(family).items():
        inputs = build(texts, images, "query")
        embedder.uniform_trace = False
        plain_order, plain_grads, plain = _trace(embedder, inputs)
        plain_values = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.grad is not None}
        embedder.uniform_trace = True
        order, grads, emb = _trace(embedder, inputs)
        # the embeddings and every gradient of the plain call are unchanged; the dummies' gradients are exactly 0
        assert torch.equal(emb, plain), kind
        for name, p in embedder.named_parameters():
            if name in plain_values:
                assert torch.equal(p.grad, plain_values[name]), (kind, name)
            elif p.grad is not None:
                assert not p.grad.any(), (kind, name)
        traces[kind] = (order, grads)
        embedder.uniform_trace = False
    first = next(iter(traces.values()))
    assert len(first[0]) == len(fsdp_units(embedder))  # every unit, once
    for kind, trace in traces.items():
        assert trace[0] == first[0], f"{kind}: units ran in another order"
        assert trace[1] == first[1], f"{kind}: other parameters got gradients: {sorted(trace[1] ^ first[1])[:4]}"
    # without the uniform trace a text-only call skips the vision units (what made ranks' collectives differ)
    order, _, _ = _trace(embedder, build(*_batches(family)["text"], "query"))
    assert len(order) < len(first[0])


def test_real_towers_are_recorded_only_with_gradients(embedders):
    embedder = embedders("qwen2_vl")
    build = embedder.input_builder
    embedder.uniform_trace = True
    try:
        embedder.real_towers = set()
        embedder(build(*_batches("qwen2_vl")["text"], "query"))
        assert embedder.real_towers == set()
        with torch.no_grad():
            embedder(build(*_batches("qwen2_vl")["image"], "query"))
        assert embedder.real_towers == set()
        embedder(build(*_batches("qwen2_vl")["mixed"], "query"))
        assert embedder.real_towers == {"vision"}
    finally:
        embedder.uniform_trace = False
        embedder.real_towers = set()


def test_a_tower_no_rank_used_gets_no_gradient():
    """A step whose rows never reached the vision tower (on any rank) leaves its weights with `grad=None`, as DDP
    and one process do, although the dummy pass gave them zero gradients: AdamW's weight decay and momentum then
    leave the tower alone. A step with images keeps every gradient."""
    from embedders import EmbeddingModule
    from losses import InfoNCE

    torch.manual_seed(0)
    module = EmbeddingModule(family="qwen2_vl", config={}, loss=InfoNCE(),
                             optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})
    module.embedder.uniform_trace = True
    build = module.embedder.input_builder
    for kind, expect_vision in (("text", False), ("mixed", True)):
        module.zero_grad(set_to_none=True)
        texts, images = _batches("qwen2_vl")[kind]
        q = module.embedder(build(texts, images, "query"))
        t = module.embedder(build(["a red circle", "a blue square"], [None, None], "target"))
        module.loss(q, t).backward()
        vision = {n for n, p in module.embedder.named_parameters() if ".visual." in f".{n}"}
        assert all(p.grad is not None for n, p in module.embedder.named_parameters() if n in vision)
        module._drop_unused_tower_grads()
        for n, p in module.embedder.named_parameters():
            if n in vision:
                assert (p.grad is not None) == expect_vision, (kind, n)
            else:
                assert p.grad is not None, (kind, n)
        assert module.embedder.real_towers == set()  # consumed by the optimizer step
