"""Mining scores are fp32/fp64 whatever the autocast context: SaHa clustering and mined-negative retrieval
run on numpy/faiss, so a call made inside `torch.autocast(..., bfloat16)` (e.g. a callback inside a bf16-mixed
run) gives exactly what it gives outside, and bf16 embeddings are widened to float32 before any product."""

from __future__ import annotations

import numpy as np
import torch

from mining.negatives import retrieve
from mining.saha import build_saha_clusters


def _emb(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)


def test_saha_and_retrieval_ignore_autocast():
    q, c = _emb(60, 16, 0), _emb(30, 16, 1)
    owner = torch.arange(60) % 30
    ref_clusters = build_saha_clusters(q, c, owner, k=3, pool_mult=2, classification=False)
    ref = retrieve(q.numpy(), c.numpy(), owner.numpy(), pool=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        clusters = build_saha_clusters(q, c, owner, k=3, pool_mult=2, classification=False)
        got = retrieve(q.numpy(), c.numpy(), owner.numpy(), pool=5)
        # bf16 embeddings are widened to float32 (their values rounded, but scored in float32/float64)
        widened = build_saha_clusters(q.bfloat16(), c.bfloat16(), owner, k=3, pool_mult=2, classification=False)
    assert clusters == ref_clusters and ref_clusters
    for a, b in zip(got, ref):
        assert np.array_equal(a, b)
    assert ref[1].dtype == np.float64
    assert widened == build_saha_clusters(q.bfloat16().float(), c.bfloat16().float(), owner, k=3, pool_mult=2,
                                          classification=False)
