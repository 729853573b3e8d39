"""SaHa hard-negative clustering: groups the queries of one training subset into batches of hard negatives.

This module owns the offline mining step of "SaHa: self-aware hard negative sampling". Given every unique
query embedding of a subset and every unique positive ("candidate") embedding, it returns clusters of query
indices; a training batch built from one cluster makes each query's positive a hard negative for the others.
A candidate's *owners* are the queries whose positive it is (several queries can share one positive, e.g.
every "dog" query of a classification subset).

Algorithm, with K = ``k`` owners kept per cluster, m = ``pool_mult``, n = K·m owners collected before
filtering and P = min(2·n, C) candidates retrieved per query:

Phase 1 visits the queries in data order, skipping *used* ones. For query q it takes the top P candidates
by inner product, drops q's own positive, and walks the rest in rank order; from each candidate it takes
the unused owner whose query embedding is most similar to q (if any) until n owners are collected. If none
was collected q stays unused. Otherwise q is marked used, the owners are stable-sorted by *ascending*
query-query similarity to q (owners that nearly duplicate q probably have answers that are also right for
q, i.e. false negatives) and the first K are kept and marked used; the cluster is [q, kept owners...].
Classification subsets skip the re-sort and keep the first K in candidate-rank order: each query has
exactly one right label, so an owner of another label can never be a false negative.

Phase 2 repeats the loop for the queries still unused, with an owner cap of 2·n (the pool stays P) and
with an owner eligible when it has not yet been chosen as an owner *in phase 2*, so every phase-1 member
can serve once more. Phase-1 clusters are disjoint; queries that end in no cluster are leftovers, which
are not returned (the caller batches them some other way). The result is the phase-1 clusters in creation
order followed by the phase-2 clusters.

Defaults in the literature: the paper's runs use K=15, m=3; its released code defaults to K=7.

Determinism. Retrieval runs through faiss in float32, but every retrieved candidate is re-scored in float64
from the float32 embeddings, and the retrieved list is ordered by descending float64 score with ties broken
by ascending candidate index. When several owners of a candidate are eligible, the most similar one wins
with ties broken by ascending query index. The float32 search is widened automatically whenever its
round-off could decide which candidates make the top P, so the exact (``index="flat"``) result does not
depend on faiss' kernels, the chunk size or the thread count (only on float64 rounding, which matters for
scores equal to within about 1e-16). Inner products are used as they are: pass L2-normalised embeddings
to get cosine similarity (this is not checked).

Memory stays bounded: no N×C score matrix is ever built (queries are searched in chunks of
``search_chunk``), owners are stored CSR-style in flat numpy arrays, and only queries that are still
unused when their turn comes are searched at all, which is a small fraction of N because most queries are
absorbed into an earlier cluster first.
"""

from __future__ import annotations

import logging
import math
import numbers
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["build_saha_clusters", "saha_cluster_stats"]

_F32_UNIT_ROUNDOFF = 2.0**-24
# Extra candidates fetched beyond P so that float32 round-off rarely forces a second, wider search.
_MIN_SEARCH_MARGIN = 8
# Rescoring gathers [rows, k, d] float32 candidate vectors; this many elements keeps that near 32 MB.
_RESCORE_BLOCK_ELEMENTS = 8 * 2**20
# Owners examined per vectorised step; bounds the work per step when a candidate has thousands of
# owners (classification subsets) while keeping the common one-owner-per-candidate case in one step.
_OWNER_BLOCK_BUDGET = 16384
# faiss' k-means warns below 39 training points per centroid; we train on a little more than that.
_IVF_MIN_POINTS_PER_LIST = 39
_IVF_TRAIN_POINTS_PER_LIST = 40
_IVF_SAMPLE_SEED = 0
_FINITE_CHECK_ROWS = 65536


@dataclass
class _MiningReport:
    """Timings and counts of one mining run, for logs and the benchmark."""

    num_queries: int = 0
    num_candidates: int = 0
    pool_size: int = 0
    index_kind: str = "flat"
    index_build_seconds: float = 0.0
    queries_searched: int = 0
    retrieval_seconds: float = 0.0
    phase1_clusters: int = 0
    phase2_clusters: int = 0
    total_seconds: float = 0.0


def build_saha_clusters(
    query_emb: Any,
    cand_emb: Any,
    positive_of_query: Any,
    k: int,
    pool_mult: int,
    classification: bool,
    *,
    index: str = "flat",
    search_chunk: int = 4096,
    nprobe: int = 32,
    progress: bool = False,
) -> list[list[int]]:
    """Cluster the queries of one subset with SaHa (see the module docstring for the algorithm).

    Args:
        query_emb: [N, d] float32 query embeddings (numpy array or torch tensor), L2-normalised.
        cand_emb: [C, d] float32 embeddings of the unique positives, L2-normalised.
        positive_of_query: [N] integer index of each query's positive among the candidates.
        k: owners kept per cluster (K); clusters have at most k + 1 members.
        pool_mult: pool multiplier m; n = k * m owners are collected before filtering.
        classification: keep owners in candidate-rank order instead of re-sorting by similarity.
        index: ``"flat"`` for exact inner-product search, ``"ivf"`` for an approximate IVF-Flat index meant
            for corpora beyond a million candidates: nlist = round(4·sqrt(C)), capped at C // 39 so k-means
            has enough points per list, trained on a seeded sample of 40·nlist candidates. Below 78
            candidates (fewer than two lists) it falls back to the exact search.
        search_chunk: queries searched per faiss call; bounds the memory of the search.
        nprobe: IVF lists visited per query (``index="ivf"`` only; capped at nlist).
        progress: show tqdm progress bars.

    Returns:
        Clusters of query indices: anchor first, then its kept owners. Phase-1 clusters in creation order,
        then phase-2 clusters. Queries in no cluster (leftovers) are not listed.
    """
    clusters, _ = mine_saha_clusters(
        query_emb,
        cand_emb,
        positive_of_query,
        k,
        pool_mult,
        classification,
        index=index,
        search_chunk=search_chunk,
        nprobe=nprobe,
        progress=progress,
    )
    return clusters


def saha_cluster_stats(clusters: Sequence[Sequence[int]], num_queries: int) -> dict[str, float | int]:
    """Summary statistics of SaHa clusters over a subset of ``num_queries`` queries.

    Cluster sizes count the anchor. A query counts as covered when it is in at least one cluster; leftovers
    are the queries in none. Phase-2 clusters may reuse phase-1 members, which shows up in
    ``queries_in_multiple_clusters``. Size statistics are 0 when there are no clusters.
    """
    if num_queries < 0:
        raise ValueError(f"num_queries must be >= 0, got {num_queries}.")
    sizes = np.fromiter((len(cluster) for cluster in clusters), dtype=np.int64, count=len(clusters))
    members = np.fromiter(
        (member for cluster in clusters for member in cluster), dtype=np.int64, count=int(sizes.sum())
    )
    if members.size and (members.min() < 0 or members.max() >= num_queries):
        bad = members[(members < 0) | (members >= num_queries)][0]
        raise ValueError(
            f"Cluster member {bad} is outside [0, {num_queries}); pass the number of queries the clusters "
            "were built from."
        )
    appearances = np.bincount(members, minlength=num_queries)
    covered = int(np.count_nonzero(appearances))
    return {
        "num_queries": int(num_queries),
        "num_clusters": len(clusters),
        "mean_cluster_size": float(sizes.mean()) if sizes.size else 0.0,
        "min_cluster_size": int(sizes.min()) if sizes.size else 0,
        "max_cluster_size": int(sizes.max()) if sizes.size else 0,
        "queries_covered": covered,
        "leftover_queries": int(num_queries) - covered,
        "queries_in_multiple_clusters": int(np.count_nonzero(appearances > 1)),
    }


def mine_saha_clusters(
    query_emb: Any,
    cand_emb: Any,
    positive_of_query: Any,
    k: int,
    pool_mult: int,
    classification: bool,
    *,
    index: str = "flat",
    search_chunk: int = 4096,
    nprobe: int = 32,
    progress: bool = False,
) -> tuple[list[list[int]], _MiningReport]:
    """``build_saha_clusters`` plus a report of where the time went."""
    start = time.perf_counter()
    query_emb = _as_float32_matrix(query_emb, "query_emb")
    cand_emb = _as_float32_matrix(cand_emb, "cand_emb")
    positives = _as_index_vector(positive_of_query, "positive_of_query")
    _validate(query_emb, cand_emb, positives, k, pool_mult, index, search_chunk, nprobe)

    num_queries, num_cands = query_emb.shape[0], cand_emb.shape[0]
    owners_per_pass = k * pool_mult
    pool = min(2 * owners_per_pass, num_cands)
    report = _MiningReport(
        num_queries=num_queries, num_candidates=num_cands, pool_size=pool, index_kind=index
    )
    if num_queries == 0:
        return [], report

    build_start = time.perf_counter()
    retriever = _TopCandidateRetriever(cand_emb, pool, index, nprobe)
    report.index_build_seconds = time.perf_counter() - build_start
    report.index_kind = retriever.kind
    collector = _OwnerCollector(query_emb, positives, num_cands, k, classification)

    used = np.zeros(num_queries, dtype=bool)
    clusters: list[list[int]] = []
    # A query still unused after phase 1 was necessarily searched (and failed) in phase 1; keeping its
    # row spares a second search in phase 2.
    failed_rows: dict[int, np.ndarray] = {}

    batch_ids = np.empty(0, dtype=np.int64)
    batch_rows = np.empty((0, pool), dtype=np.int64)
    for query in tqdm(range(num_queries), desc="SaHa phase 1", disable=not progress, mininterval=1.0):
        if used[query]:
            continue
        slot = int(np.searchsorted(batch_ids, query))
        if slot >= batch_ids.size or batch_ids[slot] != query:
            # Search ahead only the queries unused right now: queries absorbed into a cluster are never
            # anchors, so searching them would be wasted work.
            batch_ids = query + np.flatnonzero(~used[query:])[:search_chunk]
            batch_rows = retriever.top_candidates(query_emb[batch_ids])
            slot = 0
        row = batch_rows[slot]
        owners, sims = collector.collect(query, row, blocked=used, cap=owners_per_pass)
        if owners.size == 0:
            failed_rows[query] = row.copy()
            continue
        kept = collector.keep(owners, sims)
        used[query] = True
        used[kept] = True
        clusters.append([query, *kept.tolist()])
    report.phase1_clusters = len(clusters)

    chosen_in_phase2 = np.zeros(num_queries, dtype=bool)
    phase2_anchors = np.flatnonzero(~used)
    for query in tqdm(phase2_anchors.tolist(), desc="SaHa phase 2", disable=not progress, mininterval=1.0):
        if used[query]:
            continue
        row = failed_rows.pop(query, None)
        if row is None:
            row = retriever.top_candidates(query_emb[query : query + 1])[0]
        owners, sims = collector.collect(query, row, blocked=chosen_in_phase2, cap=2 * owners_per_pass)
        if owners.size == 0:
            continue
        kept = collector.keep(owners, sims)
        used[query] = True
        used[kept] = True
        chosen_in_phase2[kept] = True
        clusters.append([query, *kept.tolist()])
    report.phase2_clusters = len(clusters) - report.phase1_clusters

    report.queries_searched = retriever.queries_searched
    report.retrieval_seconds = retriever.seconds
    report.total_seconds = time.perf_counter() - start
    logger.info(
        "SaHa: %d queries, %d candidates, pool %d, %s index: %d phase-1 + %d phase-2 clusters, %d leftovers; "
        "searched %d queries in %.1fs, total %.1fs",
        num_queries,
        num_cands,
        pool,
        report.index_kind,
        report.phase1_clusters,
        report.phase2_clusters,
        int(np.count_nonzero(~used)),
        report.queries_searched,
        report.retrieval_seconds,
        report.total_seconds,
    )
    return clusters, report


class _TopCandidateRetriever:
    """Top-P candidates per query, ordered by descending float64 score, ties by ascending candidate index.

    faiss ranks in float32, so candidates whose scores differ by less than the float32 round-off could be
    ranked (or cut off at P) differently from the exact order. Each query therefore fetches a margin of
    extra candidates, every fetched candidate is re-scored in float64, and a query is searched again with
    twice as many candidates whenever a candidate that faiss did not return could still reach its top P.
    """

    def __init__(self, cand_emb: np.ndarray, pool: int, index_kind: str, nprobe: int) -> None:
        self._cand = cand_emb
        self.num_cands, self.dim = cand_emb.shape
        self.pool = pool
        self._first_k = min(self.num_cands, pool + max(_MIN_SEARCH_MARGIN, pool // 4))
        self._cand_norm_max = _max_row_norm(cand_emb)
        self._ivf: faiss.IndexIVFFlat | None = None
        self.kind = "flat"
        if index_kind == "ivf":
            self._ivf = build_ivf_index(cand_emb, nprobe)
            if self._ivf is not None:
                self.kind = "ivf"
        self.queries_searched = 0
        self.seconds = 0.0

    def top_candidates(self, queries: np.ndarray) -> np.ndarray:
        """[b, P] int64 candidate indices for each query row; -1 pads rows the IVF index could not fill."""
        start = time.perf_counter()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        num_rows = queries.shape[0]
        result = np.full((num_rows, self.pool), -1, dtype=np.int64)
        query_norms = np.sqrt(np.einsum("ij,ij->i", queries, queries, dtype=np.float64))
        # Bound on |float32 dot - exact dot| (Higham's gamma_d), doubled for safety.
        round_off = 2.0 * self.dim * _F32_UNIT_ROUNDOFF * query_norms * self._cand_norm_max

        pending = np.arange(num_rows)
        num_fetched = self._first_k
        while pending.size:
            subset = queries if pending.size == num_rows else np.ascontiguousarray(queries[pending])
            scores32, ids = self._search(subset, num_fetched)
            ids_sorted, scores64 = self._rescore_and_sort(subset, ids)
            if num_fetched >= self.num_cands:
                settled = np.ones(pending.size, dtype=bool)
            else:
                # Fewer hits than asked means the (IVF) search returned everything it could reach.
                exhausted = ids[:, -1] < 0
                # Every candidate faiss left out scored at most the weakest returned one in float32, so
                # its exact score is at most that plus the round-off bound.
                weakest_left_out_bound = scores32[:, -1].astype(np.float64) + round_off[pending]
                settled = exhausted | (scores64[:, self.pool - 1] > weakest_left_out_bound)
            result[pending[settled]] = ids_sorted[settled, : self.pool]
            pending = pending[~settled]
            num_fetched = min(self.num_cands, 2 * num_fetched)

        self.queries_searched += num_rows
        self.seconds += time.perf_counter() - start
        return result

    def _search(self, queries: np.ndarray, num_fetched: int) -> tuple[np.ndarray, np.ndarray]:
        if self._ivf is None:
            # faiss.knn searches the caller's array in place, so the corpus is not copied into an index.
            return faiss.knn(queries, self._cand, num_fetched, faiss.METRIC_INNER_PRODUCT)
        return self._ivf.search(queries, num_fetched)

    def _rescore_and_sort(self, queries: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        num_rows, num_fetched = ids.shape
        valid = ids >= 0
        gather_ids = np.where(valid, ids, 0)
        scores = np.empty((num_rows, num_fetched), dtype=np.float64)
        rows_per_block = max(1, _RESCORE_BLOCK_ELEMENTS // (num_fetched * self.dim))
        for lo in range(0, num_rows, rows_per_block):
            hi = min(num_rows, lo + rows_per_block)
            # float32 products are exact in float64, so these scores only carry float64 summation error.
            scores[lo:hi] = np.einsum(
                "rkd,rd->rk", self._cand[gather_ids[lo:hi]], queries[lo:hi], dtype=np.float64
            )
        scores[~valid] = -np.inf
        tie_key = np.where(valid, ids, self.num_cands)
        order = np.lexsort((tie_key, -scores), axis=-1)
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def build_ivf_index(cand_emb: np.ndarray, nprobe: int) -> faiss.IndexIVFFlat | None:
    """IVF-Flat inner-product index over `cand_emb` with about 4·sqrt(C) lists (trained on a fixed-seed sample),
    or None when C is too small for one. Shared by SaHa clustering and negative mining."""
    num_cands, dim = cand_emb.shape
    nlist = min(int(round(4 * math.sqrt(num_cands))), num_cands // _IVF_MIN_POINTS_PER_LIST)
    if nlist < 2:
        # A single list is an exhaustive scan, which the exact flat search does without training.
        logger.info("%d candidates are too few for an IVF index; using exact search.", num_cands)
        return None
    train_size = min(num_cands, _IVF_TRAIN_POINTS_PER_LIST * nlist)
    rng = np.random.default_rng(_IVF_SAMPLE_SEED)
    train_rows = np.sort(rng.choice(num_cands, size=train_size, replace=False))
    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(np.ascontiguousarray(cand_emb[train_rows]))
    ivf.add(cand_emb)
    ivf.nprobe = min(nprobe, nlist)
    logger.info(
        "IVF index with %d lists trained on %d candidates, nprobe %d", nlist, train_size, ivf.nprobe
    )
    return ivf


class _OwnerCollector:
    """Walks a query's retrieved candidates and picks owners; owners live in CSR arrays indexed by candidate."""

    def __init__(
        self, query_emb: np.ndarray, positives: np.ndarray, num_cands: int, k: int, classification: bool
    ) -> None:
        self._query_emb = query_emb
        self._positives = positives
        self._k = k
        self._classification = classification
        # owners of candidate c are _owners[_owner_ptr[c]:_owner_ptr[c + 1]], in ascending query order.
        self._owners = np.argsort(positives, kind="stable")
        self._owner_ptr = np.zeros(num_cands + 1, dtype=np.int64)
        np.cumsum(np.bincount(positives, minlength=num_cands), out=self._owner_ptr[1:])

    def collect(
        self, query: int, row: np.ndarray, blocked: np.ndarray, cap: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Owners picked along ``row`` (at most ``cap``, in candidate-rank order) and their similarity to query."""
        cands = row[row >= 0]
        cands = cands[cands != self._positives[query]]
        empty = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        if cands.size == 0:
            return empty
        starts = self._owner_ptr[cands]
        counts = self._owner_ptr[cands + 1] - starts
        query_vec = self._query_emb[query]
        picked: list[np.ndarray] = []
        picked_sims: list[np.ndarray] = []
        num_picked = 0
        for lo, hi in _owner_blocks(counts):
            block_owners, block_sims = self._best_owner_per_candidate(
                starts[lo:hi], counts[lo:hi], query_vec, blocked
            )
            picked.append(block_owners)
            picked_sims.append(block_sims)
            num_picked += block_owners.size
            if num_picked >= cap:
                break
        if num_picked == 0:
            return empty
        owners = np.concatenate(picked)[:cap]
        sims = np.concatenate(picked_sims)[:cap]
        return owners, sims

    def keep(self, owners: np.ndarray, sims: np.ndarray) -> np.ndarray:
        """The first K owners after the SaHa filter (ascending similarity unless classification)."""
        if not self._classification:
            owners = owners[np.argsort(sims, kind="stable")]
        return owners[: self._k]

    def _best_owner_per_candidate(
        self, starts: np.ndarray, counts: np.ndarray, query_vec: np.ndarray, blocked: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if np.all(counts == 1):
            # Common case (one query per positive): no choice to make, so no sort either.
            owners = self._owners[starts]
            owners = owners[~blocked[owners]]
            return owners, self._similarity(owners, query_vec)
        total = int(counts.sum())
        if total == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
        rank = np.repeat(np.arange(counts.size), counts)
        offset_in_cand = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        owners = self._owners[np.repeat(starts, counts) + offset_in_cand]
        eligible = ~blocked[owners]
        owners, rank = owners[eligible], rank[eligible]
        sims = self._similarity(owners, query_vec)
        # Per candidate rank: highest similarity first, ties by ascending query index.
        order = np.lexsort((owners, -sims, rank))
        sorted_rank = rank[order]
        first_of_rank = np.ones(order.size, dtype=bool)
        first_of_rank[1:] = sorted_rank[1:] != sorted_rank[:-1]
        best = order[first_of_rank]
        return owners[best], sims[best]

    def _similarity(self, owners: np.ndarray, query_vec: np.ndarray) -> np.ndarray:
        return np.einsum("od,d->o", self._query_emb[owners], query_vec, dtype=np.float64)


def _owner_blocks(counts: np.ndarray):
    """Consecutive [lo, hi) candidate ranges holding about _OWNER_BLOCK_BUDGET owners each (at least one)."""
    cumulative = np.cumsum(counts)
    if cumulative[-1] <= _OWNER_BLOCK_BUDGET:
        yield 0, counts.size
        return
    lo = 0
    while lo < counts.size:
        before = cumulative[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(cumulative, before + _OWNER_BLOCK_BUDGET, side="right")))
        yield lo, hi
        lo = hi


def _max_row_norm(matrix: np.ndarray) -> float:
    largest = 0.0
    for lo in range(0, matrix.shape[0], _FINITE_CHECK_ROWS):
        block = matrix[lo : lo + _FINITE_CHECK_ROWS]
        largest = max(largest, float(np.einsum("ij,ij->i", block, block, dtype=np.float64).max()))
    return math.sqrt(largest)


def _as_float32_matrix(values: Any, name: str) -> np.ndarray:
    """A C-contiguous float32 numpy view of ``values``; copies only when dtype, device or layout demand it."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach()
        if values.dtype != torch.float32:
            values = values.float()
        values = values.cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [rows, dim] matrix, got shape {tuple(array.shape)}.")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers (float32 embeddings), got dtype {array.dtype}.")
    return np.ascontiguousarray(array, dtype=np.float32)


def _as_index_vector(values: Any, name: str) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be a 1-D vector with one entry per query, got shape {tuple(array.shape)}."
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer candidate indices, got dtype {array.dtype}; convert it with .astype(np.int64)."
        )
    return np.ascontiguousarray(array, dtype=np.int64)


def _validate(
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    positives: np.ndarray,
    k: Any,
    pool_mult: Any,
    index: str,
    search_chunk: Any,
    nprobe: Any,
) -> None:
    for name, value in (
        ("k", k),
        ("pool_mult", pool_mult),
        ("search_chunk", search_chunk),
        ("nprobe", nprobe),
    ):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if index not in ("flat", "ivf"):
        raise ValueError(
            f"index must be 'flat' (exact) or 'ivf' (approximate, for >1M candidates), got {index!r}."
        )
    if query_emb.shape[1] != cand_emb.shape[1]:
        raise ValueError(
            f"query_emb has dimension {query_emb.shape[1]} but cand_emb has {cand_emb.shape[1]}; both must come "
            "from the same embedder."
        )
    if positives.shape[0] != query_emb.shape[0]:
        raise ValueError(
            f"positive_of_query has {positives.shape[0]} entries but there are {query_emb.shape[0]} queries; "
            "give exactly one positive index per query."
        )
    if positives.size:
        low, high = int(positives.min()), int(positives.max())
        if low < 0 or high >= cand_emb.shape[0]:
            bad_query = int(np.flatnonzero((positives < 0) | (positives >= cand_emb.shape[0]))[0])
            raise ValueError(
                f"positive_of_query[{bad_query}] = {int(positives[bad_query])} is not a valid candidate index "
                f"(there are {cand_emb.shape[0]} candidates); indices must lie in [0, {cand_emb.shape[0]})."
            )
    for name, matrix in (("query_emb", query_emb), ("cand_emb", cand_emb)):
        for lo in range(0, matrix.shape[0], _FINITE_CHECK_ROWS):
            finite = np.isfinite(matrix[lo : lo + _FINITE_CHECK_ROWS]).all(axis=1)
            if not finite.all():
                bad_row = lo + int(np.flatnonzero(~finite)[0])
                raise ValueError(
                    f"{name} row {bad_row} contains NaN or infinity (also after casting to float32); fix the "
                    "embeddings (e.g. re-run the embedder in higher precision) before mining."
                )
