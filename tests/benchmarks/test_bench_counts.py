"""The token counts `benchmarks/bench_cached_mnrl.py` prints its padding share and row tokens/s from: every attention
mask of the inputs, whatever holds it (sentence-transformers' features are transformers' BatchEncoding, a UserDict,
which a dict check missed: the table printed 100 % padding and 0 tokens/s for sentence-transformers)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import BatchEncoding

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import bench_cached_mnrl  # noqa: E402


def test_token_counts_read_batch_encodings_and_nested_chunks():
    st_features = [BatchEncoding({"input_ids": torch.ones(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}),
                   BatchEncoding({"attention_mask": torch.tensor([[1, 1, 1, 1]])})]
    embedlab_chunks = {"query": [{"attention_mask": torch.ones(2, 2)}, {"attention_mask": torch.tensor([[1, 0]])}]}
    assert bench_cached_mnrl.token_counts(st_features) == (3 + 4, 6 + 4)
    assert bench_cached_mnrl.token_counts(embedlab_chunks) == (4 + 1, 4 + 2)
    assert bench_cached_mnrl.token_counts({"input_ids": torch.ones(2, 2)}) == (0, 0)   # no mask: nothing counted
