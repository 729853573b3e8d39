"""Embedding one training subset for mining: one query embedding per row, one embedding per unique positive.

A multi-vector model's token vectors are mined through a pooled proxy: the normalised mean of each item's token
vectors (`embedders.multi_vector.pooled_proxy`). SaHa's owner choice needs query–query similarities and exact
search over the whole subset, which MaxSim (asymmetric, one L_q × L_d interaction per pair) offers neither cheaply
nor symmetrically; the proxy keeps both. Negative mining keeps the token vectors as well (`keep_tokens=True`) and
re-scores the proxy's retrieved pool by exact MaxSim (`mining/negatives.py`, `mining.rescore`), so the filters and
selectors see the scores the model trains with; what it costs is the subset's token vectors in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from datamodules.images import ImageLoader
from datamodules.schema import Item, TrainPair
from embedders.multi_vector import compact_tokens, pooled_proxy
from evaluation.encoding import encode_unique


@dataclass
class SubsetEmbeddings:
    """Queries are the rows themselves (not deduplicated: SaHa clusters rows, and two rows with the same
    query are still two training pairs); candidates are the unique positives (deduplicated by Item, so
    every classification label is one candidate that all of its rows own)."""

    query: np.ndarray  # [N, d] float32, L2-normalised, row i = pairs[i].query
    candidates: np.ndarray  # [C, d] float32, L2-normalised
    candidate_items: list[Item]  # [C]
    positive_of_query: np.ndarray  # [N] int64 index into candidates
    #: A multi-vector model's token vectors (`keep_tokens=True`), compacted: [N, Lq, d] and [C, Ld, d] float32, zero
    #: rows = no token; None for a single-vector model. `query` / `candidates` are then their pooled proxies.
    query_tokens: torch.Tensor | None = None
    candidate_tokens: torch.Tensor | None = None


def unique_positives(pairs: Sequence[TrainPair]) -> tuple[list[Item], list[TrainPair], np.ndarray]:
    """The distinct positives in first-seen order, the first pair holding each, and each pair's index."""
    index: dict[Item, int] = {}
    holders: list[TrainPair] = []
    positive_of = np.empty(len(pairs), dtype=np.int64)
    for i, pair in enumerate(pairs):
        if pair.positive not in index:
            index[pair.positive] = len(index)
            holders.append(pair)
        positive_of[i] = index[pair.positive]
    return list(index), holders, positive_of


def _normalise(x: np.ndarray) -> np.ndarray:
    # Mining ranks by cosine similarity whatever the embedder's `normalize` setting.
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def embed_subset(embedder, pairs: Sequence[TrainPair], image_loader: ImageLoader, batch_size: int = 64,
                 num_workers: int = 0, progress: bool = False, distributed: bool = False,
                 keep_tokens: bool = False) -> SubsetEmbeddings:
    """Encode `pairs`' queries (query side of the prompt) and unique positives (target side).
    `distributed=True`: every rank calls this with the same pairs, encodes a shard, and gets everything.
    `keep_tokens`: a multi-vector model's token vectors are kept beside their proxies (ignored for single-vector)."""
    items, holders, positive_of = unique_positives(pairs)
    queries = [(p.query, p.subset, p.row, "qry_image_path", image_loader) for p in pairs]
    targets = [(p.positive, p.subset, p.row, "pos_image_path", image_loader) for p in holders]
    q_enc = encode_unique(embedder, queries, "query", batch_size, num_workers, progress, distributed)
    c_enc = encode_unique(embedder, targets, "target", batch_size, num_workers, progress, distributed)
    tokens = keep_tokens and q_enc.ndim == 3
    q, c = pooled_proxy(q_enc).numpy(), pooled_proxy(c_enc).numpy()
    return SubsetEmbeddings(_normalise(q), _normalise(c), items, positive_of,
                            compact_tokens(q_enc) if tokens else None, compact_tokens(c_enc) if tokens else None)
