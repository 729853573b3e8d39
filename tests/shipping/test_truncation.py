"""Matryoshka truncation shared by encoding, evaluation and shipping: `Embedder.truncate_dim` keeps the first N
dimensions of the pooled vector and re-normalises; `evaluate.py eval.dim=N` scores such embeddings."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from shipping import save_embedder


def test_truncation_is_the_renormalised_prefix(tiny_embedder):
    embedder = tiny_embedder("qwen2_vl")
    texts, images = ["a red circle", "<|image_1|>\nRepresent the given image."], [None, Image.new("RGB", (84, 84))]
    full = embedder.encode(texts, images)
    truncated = embedder.truncated(16)
    short = truncated.encode(texts, images)
    assert short.shape == (2, 16)
    torch.testing.assert_close(short, torch.nn.functional.normalize(full[:, :16], dim=-1), rtol=1e-5, atol=1e-6)
    # The original is left as it was (same weights, full dimension); None returns the Embedder itself.
    assert embedder.truncate_dim is None and embedder.encode(texts[:1]).shape == (1, 128)
    assert truncated.backbone is embedder.backbone
    assert truncated.truncated(None) is truncated and truncated.truncate_dim == 16
    with pytest.raises(ValueError, match="exceeds the embedding dimension 128"):
        embedder.truncated(512).encode(texts[:1])
    with pytest.raises(ValueError, match="positive integer"):
        embedder.truncated(0)


def test_evaluate_eval_dim(compose_cfg, bundled_root, tiny_embedder, tmp_path):
    from embedders import Embedder
    from evaluation import job as evaluate
    from evaluation.mmeb import evaluate_embedder
    from evaluation.runner import build_suite

    directory = save_embedder(tiny_embedder("qwen2_vl"), tmp_path / "e")
    extra = [f"bundled.root={bundled_root}", "bundled.train_per_subset=60", "bundled.eval_per_dataset=12",
             f"embedder_dir={directory}", "device=cpu", "eval_data.max_rows=6"]
    truncated = evaluate.run(compose_cfg("evaluate", [*extra, "eval.dim=8"]))
    full = evaluate.run(compose_cfg("evaluate", extra))
    suite = build_suite(compose_cfg("evaluate", extra).eval_data)
    want = evaluate_embedder(Embedder.from_pretrained(directory, truncate_dim=8), suite, progress=False)
    assert {n: d["precision@1"] for n, d in truncated["datasets"].items()} == \
        {n: d["precision@1"] for n, d in want["datasets"].items()}
    assert truncated["datasets"] != full["datasets"]  # 8 of 128 dimensions rank differently
