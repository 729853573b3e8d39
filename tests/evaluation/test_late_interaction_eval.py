"""Multi-vector evaluation: blocked MaxSim row scoring and exact top-k against naive loops; the MMEB protocol with a
multi-vector model on the bundled v1-style image datasets and V2 visual-document corpora against a naive
single-process reference (every item encoded alone, every pair scored by a Python loop); int8/binary codes equal to
sentence-transformers' `quantize_embeddings`, rescoring against an independent computation; storage per document."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from embedders import Embedder
from evaluation.encoding import encode_unique
from evaluation.engine import run_protocol
from evaluation.late_interaction import score_rows_maxsim, search_maxsim
from evaluation.quantization import QuantizedDocuments, quantize
from evaluation.retrieval import ranking_metrics
from evaluation.runner import build_suite
from evaluation.scorers import EmbeddingScorer
from evaluation.store import EvalSettings

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "helpers"))

from maxsim import naive_maxsim, tokens  # noqa: E402


@pytest.mark.parametrize("mean", [False, True])
def test_row_scoring_equals_naive(mean):
    q, c = tokens(5, 4, 8, 0), tokens(9, 6, 8, 1)
    q_ids = torch.tensor([0, 1, 2, 3, 4, 0])
    c_ids = torch.tensor([[0, 1, 2], [3, 4, -1], [5, 6, 7], [8, 0, -1], [1, 2, 3], [4, 5, 6]])
    for block in (1, 40, 1 << 24):
        got = score_rows_maxsim(q, c, q_ids, c_ids, mean, block)
        for i in range(6):
            for j in range(3):
                if c_ids[i, j] < 0:
                    assert got[i, j] == float("-inf")
                else:
                    assert got[i, j].item() == pytest.approx(naive_maxsim(q[q_ids[i]], c[c_ids[i, j]], mean), abs=1e-5)


def test_exact_top_k_equals_a_full_sort_with_ties_by_index():
    q, c = tokens(4, 3, 8, 2), tokens(30, 5, 8, 3)
    c[7] = c[2]  # exact ties: the lower index first
    c[20] = c[2]
    full = torch.tensor([[naive_maxsim(qi, cj) for cj in c] for qi in q], dtype=torch.float32)
    want = torch.sort(full, dim=1, descending=True, stable=True).indices[:, :10]
    for block in (15, 100, 1 << 24):  # the corpus scanned in chunks of 1 … all
        scores, index = search_maxsim(q, c, 10, block_elements=block)
        assert torch.equal(index, want), block
        assert torch.allclose(scores, full.gather(1, want), atol=1e-5)


# ------------------------------------------------------------------ the protocol on the bundled data
@pytest.fixture(scope="module")
def mv_embedder():
    torch.manual_seed(0)
    return Embedder.build("qwen2_vl", config={}, pooling="multi_vector", multi_vector={"dim": 16})


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    cfg = OmegaConf.create({"eval_data": OmegaConf.load(ROOT / "conf/eval_data/mmeb_v2_bundled.yaml")})
    cfg.eval_data.bundled_v2.root = str(tmp_path_factory.mktemp("v2") / "bundled_v2")
    cfg.eval_data.bundled_v2.queries_per_dataset = 2
    suite = build_suite(OmegaConf.to_container(cfg, resolve=True)["eval_data"])
    image = [ds for ds in suite if ds.modality == "image" and ds.task is None][:1]
    visdoc = [ds for ds in suite if ds.modality == "visdoc" and ds.task is not None][:1]
    assert len(image) == 1 and len(visdoc) == 1
    return image + visdoc


_ALONE: dict = {}


def _alone(embedder, ds, item, side):
    """One item encoded alone (batch of one), as the protocol's batch_size=1 run encodes it."""
    from datamodules.media import MediaLoader

    key = (side, item.text, item.image, tuple(item.pages), item.instruction, ds.image_root)
    if key not in _ALONE:
        loader = MediaLoader(ds.image_root, ds.num_frames, ds.max_frames_saved, ds.frame_saving)
        _ALONE[key] = encode_unique(embedder, [(item, ds.name, 0, "item", loader)], side, batch_size=1)[0]
    return _ALONE[key]


def _reference(embedder, ds):
    """Naive single-process scores of one dataset: P@1 for candidate rows, NDCG@5 for a corpus."""
    mean = embedder.head.similarity == "meanmaxsim"
    if ds.task is None:
        hits = []
        for r in ds.rows:
            q = _alone(embedder, ds, r.query, "query")
            scores = [naive_maxsim(q, _alone(embedder, ds, c, ds.candidate_side), mean) for c in r.candidates]
            hits.append(int(np.argmax(scores)) in r.relevant)
        return {"precision@1": 100 * sum(hits) / len(hits)}
    docs = [_alone(embedder, ds, c, ds.candidate_side) for c in ds.task.corpus]
    ranked = []
    for q_item in ds.task.queries:
        q = _alone(embedder, ds, q_item, "query")
        s = torch.tensor([naive_maxsim(q, d, mean) for d in docs])
        order = torch.sort(s, descending=True, stable=True).indices[:10]
        ranked.append([ds.task.corpus_ids[i] for i in order])
    return ranking_metrics(ranked, list(ds.task.query_ids), ds.task.qrels)


def test_protocol_equals_the_naive_single_process_reference(mv_embedder, suite):
    results = run_protocol(mv_embedder, suite, batch_size=1, progress=False)
    assert not results["failed"]
    for ds in suite:
        entry, want = results["datasets"][ds.name], _reference(mv_embedder, ds)
        if ds.task is None:
            assert entry["precision@1"] == pytest.approx(want["precision@1"]), ds.name
        else:
            for key in ("ndcg_linear@5", "hit@1", "recall@10"):
                assert entry["metrics"][key] == pytest.approx(want[key], abs=1e-12), (ds.name, key)
        storage = entry["storage"]
        assert storage["precision"] == "float32" and storage["dim"] == 16
        assert storage["bytes_per_doc"] == pytest.approx(storage["vectors_per_doc"] * 16 * 4)
        assert storage["vectors_per_doc"] > 1


def test_token_pooling_and_quantisation_run_through_the_protocol(mv_embedder, suite):
    visdoc = [ds for ds in suite if ds.task is not None][:1]
    plain = run_protocol(mv_embedder, visdoc, batch_size=4, progress=False)["datasets"][visdoc[0].name]
    for settings, precision in ((EvalSettings(token_pooling=2.0), "float32"), (EvalSettings(quantize="int8"), "int8"),
                                (EvalSettings(quantize="binary"), "binary")):
        entry = run_protocol(mv_embedder, visdoc, batch_size=4, progress=False,
                             settings=settings)["datasets"][visdoc[0].name]
        assert entry["storage"]["precision"] == precision
        assert 0 <= entry["metrics"]["ndcg_linear@5"] <= 1
        if settings.token_pooling:
            assert entry["storage"]["vectors_per_doc"] <= plain["storage"]["vectors_per_doc"] / 2 + 1
        else:
            assert entry["storage"]["bytes_per_doc"] < plain["storage"]["bytes_per_doc"] / 3


# ------------------------------------------------------------------ quantisation
def test_codes_equal_sentence_transformers_quantize_embeddings():
    from sentence_transformers.util.quantization import quantize_embeddings

    dense = torch.nn.functional.normalize(torch.randn(50, 20, generator=torch.Generator().manual_seed(4)), dim=-1)
    for precision in ("int8", "binary"):
        ours = QuantizedDocuments.build(dense, precision).codes.numpy()
        assert np.array_equal(ours, quantize_embeddings(dense.numpy(), precision))
    docs = tokens(12, 9, 20, 5)  # multi-vector: one calibration over every token of every document
    per_doc = [d[d.ne(0).any(-1)].numpy() for d in docs]
    for precision in ("int8", "binary"):
        theirs = quantize_embeddings(per_doc, precision)
        ours = QuantizedDocuments.build(docs, precision).codes
        for d, t, o in zip(docs, theirs, ours):
            assert np.array_equal(o[d.ne(0).any(-1)].numpy(), t)


@pytest.mark.parametrize("precision", ["int8", "binary"])
@pytest.mark.parametrize("multi", [False, True])
def test_rescoring_equals_an_independent_computation(precision, multi):
    """Every candidate rescored (multiplier ≥ K): the scores are the float query against the stored codes read back
    as sentence-transformers reads them (int8: min + (code + 128) · step; binary: {0, 1} bits)."""
    g = torch.Generator().manual_seed(6)
    if multi:
        q, c = tokens(4, 3, 16, 7), tokens(10, 5, 16, 8)
    else:
        q = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
        c = torch.nn.functional.normalize(torch.randn(10, 16, generator=g), dim=-1)
    rows = [c[c.ne(0).any(-1)] if multi else c][0]
    lo, hi = rows.min(0).values, rows.max(0).values
    step = torch.where((hi - lo) / 255 == 0, torch.ones_like(lo), (hi - lo) / 255)
    codes = quantize(c, precision, torch.stack([lo, hi]))
    if precision == "int8":
        back = lo + (codes.float() + 128) * step
    else:
        back = torch.tensor(np.unpackbits((codes.numpy().astype(np.int16) + 128).astype(np.uint8), axis=-1))[..., :16]
        back = back.float()
    if multi:
        back = back * c.ne(0).any(-1, keepdim=True)
    q_ids, c_ids = torch.arange(4), torch.arange(10).repeat(4, 1)
    scorer = EmbeddingScorer("maxsim" if multi else None, quantize=precision, rescore_multiplier=10)
    got = scorer.score_rows(q, c, q_ids, c_ids)
    want = (torch.tensor([[naive_maxsim(qi, b) for b in back] for qi in q]) if multi else q @ back.T)
    assert torch.allclose(got, want.float(), atol=1e-4)
    # with a small multiplier only the stage-1 top candidates keep their rescored score, ranked above the rest
    got2 = EmbeddingScorer("maxsim" if multi else None, quantize=precision, rescore_multiplier=2).score_rows(
        q, c, q_ids, c_ids)
    kept = torch.isclose(got2, got, atol=1e-5)
    assert (kept.sum(1) >= 2).all()
    below = got2.masked_fill(kept, float("-inf")).max(1).values
    assert (below < got2.masked_fill(~kept, float("inf")).min(1).values).all()
