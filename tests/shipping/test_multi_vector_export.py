"""A saved multi-vector Embedder is a sentence-transformers `MultiVectorEncoder`: `encode_query` / `encode_document`
return embedlab's token vectors (its non-padding rows, ≤ 1e-5) for texts, images and image+text inputs, and
`similarity` its MaxSim / MeanMaxSim scores; embedlab reloads it exactly; the card says it is multi-vector and its
sentence-transformers snippet runs."""

from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image

from embedders import Embedder
from losses import maxsim
from shipping import save_embedder

TOL = 1e-5


def _inputs():
    red, blue = Image.new("RGB", (84, 84), "red"), Image.new("RGB", (56, 112), (20, 40, 200))
    return [
        "a red circle on the left and a blue square on the right",
        {"text": "<|image_1|>\nRepresent the given image with the following question: What color is it?", "image": red},
        {"text": "a blue one", "image": blue},
        "short",
    ]


def _ours(embedder, items, side):
    texts = [i["text"] if isinstance(i, dict) else i for i in items]
    images = [i.get("image") if isinstance(i, dict) else None for i in items]
    return embedder.encode(texts, images=images, side=side, batch_size=2)


@pytest.mark.parametrize("similarity", ["maxsim", "meanmaxsim"])
def test_multi_vector_encoder_loads_the_export(tmp_path, tiny_embedder, similarity):
    from sentence_transformers import MultiVectorEncoder

    embedder = tiny_embedder("qwen2_vl", pooling="multi_vector",
                             multi_vector={"dim": 16, "similarity": similarity, "skip_tokens": "special"})
    out = save_embedder(embedder, tmp_path / "export")
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["model_type"] == "MultiVectorEncoder" and st_config["similarity_fn_name"] == similarity
    model = MultiVectorEncoder(str(out), device="cpu")
    items = _inputs()
    encoded = {}
    for side, fn in (("query", model.encode_query), ("target", model.encode_document)):
        ours = _ours(embedder, items, side)
        theirs = fn(items, batch_size=2)
        assert len(theirs) == len(items)
        for o, t in zip(ours, theirs):
            o = o[o.ne(0).any(-1)]  # embedlab pads with zero rows; sentence-transformers returns the tokens only
            assert o.shape == t.shape
            assert (o - t).abs().max().item() <= TOL, side
        encoded[side] = (ours, theirs)
    ours_scores = maxsim(encoded["query"][0], encoded["target"][0], mean=similarity == "meanmaxsim")
    theirs_scores = model.similarity(encoded["query"][1], encoded["target"][1])
    assert torch.allclose(ours_scores, theirs_scores.float(), atol=1e-4)
    # embedlab's own reload is exact
    reloaded = Embedder.from_pretrained(out)
    assert torch.equal(_ours(reloaded, items, "query"), encoded["query"][0])


def test_text_encoder_export_with_real_weights(tmp_path, minilm_path):
    from sentence_transformers import MultiVectorEncoder

    torch.manual_seed(0)
    embedder = Embedder.build("text_encoder", path=str(minilm_path), pooling="multi_vector", max_length=64,
                              multi_vector={"dim": 32})
    out = save_embedder(embedder, tmp_path / "export")
    model = MultiVectorEncoder(str(out), device="cpu")
    texts = ["a red square in the middle", "the quick brown fox jumps over the lazy dog", "hi"]
    for side, fn in (("query", model.encode_query), ("target", model.encode_document)):
        for o, t in zip(_ours(embedder, texts, side), fn(texts)):
            o = o[o.ne(0).any(-1)]
            assert o.shape == t.shape and (o - t).abs().max().item() <= TOL


def test_card_says_multi_vector_and_its_snippet_runs(tmp_path, tiny_embedder):
    embedder = tiny_embedder("qwen2_vl", pooling="multi_vector", multi_vector={"dim": 16})
    out = save_embedder(embedder, tmp_path / "export")
    card = (out / "README.md").read_text()
    assert "multi-vector" in card and "MultiVectorEncoder" in card and "MaxSim" in card
    assert re.search(r"^- late-interaction$", card, re.M)  # a Hub tag
    code = re.search(r"### sentence-transformers \(`MultiVectorEncoder`\)\n\n```python\n(.*?)```", card, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, f"{out}/README.md", "exec"), namespace)
    assert namespace["docs"][0].shape[-1] == 16
    code = re.search(r"### embedlab\n\n```python\n(.*?)```", card, re.S).group(1)
    exec(compile(code, f"{out}/README.md (embedlab)", "exec"), {})
