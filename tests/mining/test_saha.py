"""Tests for SaHa hard-negative clustering: exact agreement with a naive reference, hand-worked corpora,
invariants, the approximate index and input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mining import saha
from mining.saha import (
    _TopCandidateRetriever,
    build_saha_clusters,
    mine_saha_clusters,
    saha_cluster_stats,
)

# ---------------------------------------------------------------------------------------------------------
# Naive reference: the algorithm as specified, with plain Python loops over a full float64 score matrix.
# ---------------------------------------------------------------------------------------------------------


def naive_saha(query_emb, cand_emb, positives, k, pool_mult, classification):
    phase1, phase2 = naive_saha_phases(query_emb, cand_emb, positives, k, pool_mult, classification)
    return phase1 + phase2


def naive_saha_phases(query_emb, cand_emb, positives, k, pool_mult, classification):
    queries = np.asarray(query_emb, dtype=np.float64)
    cands = np.asarray(cand_emb, dtype=np.float64)
    positives = [int(p) for p in positives]
    num_queries, num_cands = len(queries), len(cands)
    n = k * pool_mult
    pool = min(2 * n, num_cands)
    score = queries @ cands.T
    query_sim = queries @ queries.T
    owners = [[] for _ in range(num_cands)]
    for query, positive in enumerate(positives):
        owners[positive].append(query)

    def walk(anchor, is_eligible, cap):
        ranked = sorted(range(num_cands), key=lambda c: (-score[anchor, c], c))[:pool]
        picked = []
        for cand in ranked:
            if cand == positives[anchor]:
                continue
            options = [owner for owner in owners[cand] if is_eligible(owner)]
            if not options:
                continue
            picked.append(min(options, key=lambda owner: (-query_sim[anchor, owner], owner)))
            if len(picked) == cap:
                break
        return picked

    def keep(anchor, picked):
        if not classification:
            picked = sorted(picked, key=lambda owner: query_sim[anchor, owner])  # list.sort is stable
        return picked[:k]

    used = [False] * num_queries
    clusters = []
    for anchor in range(num_queries):
        if used[anchor]:
            continue
        picked = walk(anchor, lambda owner: not used[owner], n)
        if not picked:
            continue
        kept = keep(anchor, picked)
        used[anchor] = True
        for owner in kept:
            used[owner] = True
        clusters.append([anchor, *kept])
    phase1 = clusters

    clusters = []
    chosen_in_phase2 = [False] * num_queries
    for anchor in range(num_queries):
        if used[anchor]:
            continue
        picked = walk(anchor, lambda owner: not chosen_in_phase2[owner], 2 * n)
        if not picked:
            continue
        kept = keep(anchor, picked)
        used[anchor] = True
        for owner in kept:
            used[owner] = True
            chosen_in_phase2[owner] = True
        clusters.append([anchor, *kept])
    return phase1, clusters


def random_corpus(seed, num_queries, num_cands, dim, integer_grid=False):
    """Random embeddings; every candidate is somebody's positive and most positives are shared.

    ``integer_grid`` draws entries from {-1, 0, 1}: scores are then exact small integers with many exact
    ties, which exercises every tie-breaking rule and the widening of the float32 search.
    """
    rng = np.random.default_rng(seed)
    if integer_grid:
        queries = rng.integers(-1, 2, size=(num_queries, dim)).astype(np.float32)
        cands = rng.integers(-1, 2, size=(num_cands, dim)).astype(np.float32)
    else:
        queries = rng.standard_normal((num_queries, dim)).astype(np.float32)
        cands = rng.standard_normal((num_cands, dim)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        cands /= np.linalg.norm(cands, axis=1, keepdims=True)
    positives = np.concatenate(
        [rng.permutation(num_cands), rng.integers(0, num_cands, num_queries - num_cands)]
    )
    return queries, cands, rng.permutation(positives).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------
# Agreement with the reference on random corpora
# ---------------------------------------------------------------------------------------------------------

RANDOM_CASES = [
    # seed, N, C, d, k, pool_mult, integer_grid
    (0, 50, 30, 8, 1, 1, False),
    (1, 120, 80, 16, 2, 3, False),
    (2, 200, 150, 32, 3, 2, False),
    (3, 300, 200, 12, 15, 3, False),
    (4, 300, 40, 8, 7, 1, False),
    (5, 150, 100, 8, 2, 2, True),
    (6, 300, 250, 10, 4, 3, True),
    (7, 80, 10, 8, 3, 1, True),
]


@pytest.mark.parametrize("classification", [False, True])
@pytest.mark.parametrize(("seed", "num_queries", "num_cands", "dim", "k", "pool_mult", "grid"), RANDOM_CASES)
def test_matches_naive_reference(seed, num_queries, num_cands, dim, k, pool_mult, grid, classification):
    queries, cands, positives = random_corpus(seed, num_queries, num_cands, dim, integer_grid=grid)
    expected = naive_saha(queries, cands, positives, k, pool_mult, classification)
    assert build_saha_clusters(queries, cands, positives, k, pool_mult, classification) == expected
    # Small search chunks change faiss' kernels and batching but must not change the result.
    assert (
        build_saha_clusters(queries, cands, positives, k, pool_mult, classification, search_chunk=7)
        == expected
    )


@pytest.mark.parametrize("classification", [False, True])
@pytest.mark.parametrize("seed", [10, 11, 12])
def test_invariants(seed, classification):
    queries, cands, positives = random_corpus(seed, 300, 120, 16)
    k = 3
    clusters = build_saha_clusters(queries, cands, positives, k, 2, classification)
    assert clusters
    for cluster in clusters:
        assert 2 <= len(cluster) <= k + 1
        assert all(isinstance(member, int) for member in cluster)
        assert len(set(cluster)) == len(cluster)
        anchor = cluster[0]
        # The anchor's own positive is dropped from its list, so no owner shares it.
        assert all(positives[owner] != positives[anchor] for owner in cluster[1:])
    # Anchors are never repeated: an anchor is marked used and used queries are skipped.
    anchors = [cluster[0] for cluster in clusters]
    assert len(set(anchors)) == len(anchors)
    stats = saha_cluster_stats(clusters, len(queries))
    assert stats["queries_covered"] + stats["leftover_queries"] == len(queries)
    assert stats["max_cluster_size"] <= k + 1


@pytest.mark.parametrize("classification", [False, True])
@pytest.mark.parametrize("seed", [20, 21])
def test_phase1_clusters_are_disjoint(seed, classification):
    queries, cands, positives = random_corpus(seed, 300, 100, 8)
    clusters, report = mine_saha_clusters(queries, cands, positives, 4, 2, classification)
    phase1, phase2 = naive_saha_phases(queries, cands, positives, 4, 2, classification)
    assert report.phase1_clusters == len(phase1)
    assert report.phase2_clusters == len(phase2)
    assert phase2, "the corpus should leave work for phase 2"
    members = [member for cluster in clusters[: report.phase1_clusters] for member in cluster]
    assert len(members) == len(set(members))


def test_owner_walk_in_small_blocks_matches_reference(monkeypatch):
    # Candidates with thousands of owners are walked a block at a time; force tiny blocks on a corpus
    # where every label has many owners so that the block boundaries fall everywhere.
    monkeypatch.setattr(saha, "_OWNER_BLOCK_BUDGET", 3)
    queries, cands, positives = random_corpus(25, 200, 12, 8)
    for classification in (False, True):
        expected = naive_saha(queries, cands, positives, 3, 2, classification)
        assert build_saha_clusters(queries, cands, positives, 3, 2, classification) == expected


def test_ivf_with_all_lists_probed_equals_exact():
    for seed, grid in ((30, False), (31, True)):
        queries, cands, positives = random_corpus(seed, 300, 240, 16, integer_grid=grid)
        exact = build_saha_clusters(queries, cands, positives, 3, 2, False)
        approx = build_saha_clusters(queries, cands, positives, 3, 2, False, index="ivf", nprobe=10**6)
        assert approx == exact


def test_ivf_falls_back_to_exact_for_tiny_corpus():
    queries, cands, positives = random_corpus(32, 60, 40, 8)
    exact = build_saha_clusters(queries, cands, positives, 2, 2, True)
    assert build_saha_clusters(queries, cands, positives, 2, 2, True, index="ivf", nprobe=1) == exact


def test_retrieval_ties_resolved_by_candidate_index_beyond_search_margin():
    # 200 identical candidates: every score ties, so the top 10 must be candidates 0..9 whatever faiss
    # returned first; this needs the widened search because the tie group is larger than the margin.
    cands = np.ones((200, 4), dtype=np.float32) * 0.5
    queries = np.array([[0.5, 0.5, 0.5, 0.5], [1.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    retriever = _TopCandidateRetriever(cands, pool=10, index_kind="flat", nprobe=1)
    top = retriever.top_candidates(queries)
    assert top.tolist() == [list(range(10))] * 2


def test_torch_inputs_match_numpy_inputs():
    queries, cands, positives = random_corpus(40, 100, 60, 8)
    expected = build_saha_clusters(queries, cands, positives, 2, 2, False)
    got = build_saha_clusters(
        torch.from_numpy(queries), torch.from_numpy(cands).double(), torch.from_numpy(positives), 2, 2, False
    )
    assert got == expected


def test_progress_bars_do_not_change_the_result():
    queries, cands, positives = random_corpus(41, 100, 60, 8)
    expected = build_saha_clusters(queries, cands, positives, 2, 2, False)
    assert build_saha_clusters(queries, cands, positives, 2, 2, False, progress=True) == expected


# ---------------------------------------------------------------------------------------------------------
# Hand-worked corpora. Entries are short binary fractions, so every score is exact and ties are real ties.
# The algorithm uses raw inner products, so these vectors need not be unit length.
# ---------------------------------------------------------------------------------------------------------


def similarity_order_corpus():
    # Candidates c0..c3, query i owns c_i. Candidate scores for q0 are the first coordinates:
    # c0 1, c1 0.75, c2 0.5, c3 0.25.
    cands = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.75, 0.0, 1.0, 0.0],
            [0.5, 0.0, 0.0, 1.0],
            [0.25, 1.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )
    queries = np.array(
        [
            [1.0, 0.0, 0.0, 0.0],  # q0
            [0.5, 0.0, 1.0, 0.0],  # q1: sim to q0 = 0.5
            [0.25, 0.0, 0.0, 1.0],  # q2: sim to q0 = 0.25
            [0.0, 1.0, 0.0, 0.0],  # q3: sim to q0 = 0
        ],
        dtype=np.float32,
    )
    return queries, cands, np.arange(4)


def test_hand_similarity_resort_keeps_least_similar_owner():
    # k=1, m=2: n=2 owners collected, P=min(4, 4)=4.
    # q0: ranked c0 c1 c2 c3; c0 is its own positive and dropped; collect q1 (c1), q2 (c2) -> n reached.
    #     Re-sort by ascending similarity to q0: q2 (0.25), q1 (0.5); keep the first: q2. Cluster [0, 2].
    # q1: scores c0 0.5, c1 0.375+1=1.375, c2 0.25, c3 0.125 -> ranked c1 c0 c2 c3; drop c1; c0's owner
    #     q0 and c2's owner q2 are used; c3 gives q3. Cluster [1, 3]. Everyone is used; no phase 2.
    queries, cands, positives = similarity_order_corpus()
    assert build_saha_clusters(queries, cands, positives, 1, 2, classification=False) == [[0, 2], [1, 3]]


def test_hand_classification_keeps_candidate_rank_order():
    # Same corpus, classification=True: q0 collects q1, q2 as before but keeps the first in candidate-rank
    # order: q1. Cluster [0, 1].
    # q2: scores c0 0.25, c1 0.1875, c2 0.125+1=1.125, c3 0.0625 -> ranked c2 c0 c1 c3; drop c2; q0, q1 are
    #     used; c3 gives q3. Cluster [2, 3].
    queries, cands, positives = similarity_order_corpus()
    assert build_saha_clusters(queries, cands, positives, 1, 2, classification=True) == [[0, 1], [2, 3]]
    assert naive_saha(queries, cands, positives, 1, 2, True) == [[0, 1], [2, 3]]


def shared_positive_corpus():
    # Three labels c0 c1 c2 (unit axes, so a query's candidate scores are its first three coordinates); the
    # fourth coordinate only moves query-query similarities.
    cands = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32)
    queries = np.array(
        [
            [1.0, 0.5, 0.0, 1.0],  # q0 -> c0; ranked c0 c1 c2
            [1.0, 0.0, 0.5, -1.0],  # q1 -> c0; ranked c0 c2 c1
            [0.5, 1.0, 0.0, -0.5],  # q2 -> c1; ranked c1 c0 c2
            [0.0, 1.0, 0.5, 0.5],  # q3 -> c1
            [0.0, 1.0, 0.5, 0.5],  # q4 -> c1; ranked c1 c2 c0 (same vector as q3)
            [0.0, 0.0, 1.0, 0.0],  # q5 -> c2
            [0.5, 1.0, 0.0, -0.5],  # q6 -> c1; ranked c1 c0 c2 (same vector as q2)
            [0.5, 1.0, 0.0, -0.5],  # q7 -> c1; ranked c1 c0 c2 (same vector as q2)
        ],
        dtype=np.float32,
    )
    positives = np.array([0, 0, 1, 1, 1, 2, 1, 1])
    return queries, cands, positives


def test_hand_shared_positives_phase2_reuse_and_leftover():
    # k=1, m=1: n=1, P=min(2, 3)=2, so each query sees its own label and one other.
    # Phase 1 (owners must be unused):
    #   q0: [c0, c1] -> drop c0; c1's owners q2 q3 q4 q6 q7 have similarity to q0 of 0.5, 1.0, 1.0, 0.5,
    #       0.5; q3 and q4 tie at 1.0 and the lower index wins. Cluster [0, 3].
    #   q1: [c0, c2] -> drop c0; c2's owner q5. Cluster [1, 5].
    #   q2: [c1, c0] -> drop c1; q0 and q1 are used -> no owner, q2 stays unused. Same for q6 and q7.
    #   q4: [c1, c2] -> drop c1; q5 is used -> no owner.
    # Phase 2 (cap 2n=2; owners must not have been chosen in phase 2 yet):
    #   q2: [c1, c0] -> c0's owners q0 (sim 0.5+0.5-0.5=0.5) and q1 (sim 0.5+0.5=1.0) -> q1. Cluster [2, 1].
    #   q4: [c1, c2] -> c2's owner q5. Cluster [4, 5].
    #   q6: [c1, c0] -> q1 would be more similar but was already reused once -> q0. Cluster [6, 0].
    #   q7: [c1, c0] -> q0 and q1 were both reused once -> no owner: q7 is a leftover.
    queries, cands, positives = shared_positive_corpus()
    expected = [[0, 3], [1, 5], [2, 1], [4, 5], [6, 0]]
    assert naive_saha(queries, cands, positives, 1, 1, True) == expected
    assert build_saha_clusters(queries, cands, positives, 1, 1, classification=True) == expected
    stats = saha_cluster_stats(expected, len(queries))
    assert stats["leftover_queries"] == 1
    assert stats["queries_in_multiple_clusters"] == 3  # q0, q1, q5


def test_hand_retrieval_tie_broken_by_candidate_index():
    # q0 scores c1 and c2 equally (0.5); with P=2 only the lower index c1 makes the list, so q0 gets q1.
    # q2: ranked c2 (1), then c0 and c1 tie at 0 -> c0, whose owner q0 is used: no phase-1 cluster.
    # Phase 2: q2 takes q0 (not yet chosen in phase 2). Clusters [[0, 1], [2, 0]].
    cands = np.eye(3, dtype=np.float32)
    queries = np.array([[1.0, 0.5, 0.5], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=np.float32)
    positives = np.arange(3)
    assert build_saha_clusters(queries, cands, positives, 1, 1, classification=False) == [[0, 1], [2, 0]]


def test_single_candidate_gives_no_clusters():
    queries = np.eye(3, dtype=np.float32)
    cands = np.ones((1, 3), dtype=np.float32)
    assert build_saha_clusters(queries, cands, np.zeros(3, dtype=np.int64), 2, 3, False) == []


def test_no_queries_gives_no_clusters():
    empty = np.zeros((0, 4), dtype=np.float32)
    assert (
        build_saha_clusters(empty, np.eye(4, dtype=np.float32), np.zeros(0, dtype=np.int64), 2, 3, False)
        == []
    )


# ---------------------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------------------


def test_cluster_stats():
    stats = saha_cluster_stats([[0, 1, 2], [3, 4], [5, 0]], num_queries=8)
    assert stats == {
        "num_queries": 8,
        "num_clusters": 3,
        "mean_cluster_size": pytest.approx(7 / 3),
        "min_cluster_size": 2,
        "max_cluster_size": 3,
        "queries_covered": 6,
        "leftover_queries": 2,
        "queries_in_multiple_clusters": 1,
    }
    assert saha_cluster_stats([], 5)["leftover_queries"] == 5
    with pytest.raises(ValueError, match="outside"):
        saha_cluster_stats([[0, 9]], 5)


# ---------------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------------


def valid_inputs():
    queries, cands, positives = random_corpus(50, 20, 10, 4)
    return {"query_emb": queries, "cand_emb": cands, "positive_of_query": positives}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(cand_emb=a["cand_emb"][:, :3]), "dimension"),
        (lambda a: a.update(query_emb=a["query_emb"][0]), "2-D"),
        (lambda a: a.update(positive_of_query=a["positive_of_query"][:-1]), "one positive index per query"),
        (lambda a: a.update(positive_of_query=a["positive_of_query"].reshape(4, 5)), "1-D"),
        (lambda a: a.update(positive_of_query=a["positive_of_query"] + 10), "not a valid candidate index"),
        (lambda a: a.update(positive_of_query=a["positive_of_query"] - 10), "not a valid candidate index"),
        (lambda a: a.update(positive_of_query=a["positive_of_query"].astype(np.float32)), "integer"),
        (lambda a: a["query_emb"].__setitem__((3, 1), np.nan), "query_emb row 3"),
        (lambda a: a["cand_emb"].__setitem__((7, 0), np.inf), "cand_emb row 7"),
        (lambda a: a.update(k=0), "k must be a positive integer"),
        (lambda a: a.update(pool_mult=0), "pool_mult must be a positive integer"),
        (lambda a: a.update(k=2.5), "k must be a positive integer"),
        (lambda a: a.update(index="hnsw"), "index must be"),
        (lambda a: a.update(search_chunk=0), "search_chunk"),
        (lambda a: a.update(nprobe=0), "nprobe"),
    ],
)
def test_input_validation(change, message):
    arguments = {**valid_inputs(), "k": 2, "pool_mult": 2, "classification": False}
    change(arguments)
    with pytest.raises(ValueError, match=message):
        build_saha_clusters(**arguments)
