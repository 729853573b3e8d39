"""Corpus-level retrieval: exact and faiss search (fp32, deterministic ties) and the ranking metrics,
checked against hand-worked values and against pytrec_eval (trec_eval's own C implementation)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from evaluation.retrieval import evaluate_corpus_retrieval, ranking_metrics, search

KS = (1, 5, 10)


# ----------------------------------------------------------------------------------------------- hand-worked
def test_hand_worked_graded_example():
    # Relevant: d1 (grade 2) and d3 (grade 1). Ranking: d2, d1, d4, d3, d5  -> relevant at ranks 2 and 4.
    qrels = {"q": {"d1": 2, "d3": 1, "d2": 0}}  # d2 is judged non-relevant: it must count as 0
    m = ranking_metrics([["d2", "d1", "d4", "d3", "d5"]], ["q"], qrels, ks=(1, 2, 5))
    log2 = math.log2
    assert m["hit@1"] == 0 and m["hit@2"] == 1 and m["hit@5"] == 1
    assert m["precision@1"] == 0 and m["precision@2"] == 0.5 and m["precision@5"] == pytest.approx(2 / 5)
    assert m["recall@2"] == 0.5 and m["recall@5"] == 1
    assert m["f1@5"] == pytest.approx(2 * 0.4 * 1 / 1.4)
    # DCG: grade 2 at rank 2 (discount 1/log2 3), grade 1 at rank 4 (1/log2 5); ideal order 2, 1 at ranks 1, 2
    assert m["ndcg_linear@5"] == pytest.approx((2 / log2(3) + 1 / log2(5)) / (2 + 1 / log2(3)))
    assert m["ndcg_linear@2"] == pytest.approx((2 / log2(3)) / (2 + 1 / log2(3)))
    # exponential gain 2^g - 1: 3 and 1
    assert m["ndcg_exponential@5"] == pytest.approx((3 / log2(3) + 1 / log2(5)) / (3 + 1 / log2(3)))
    # AP@5 = (P@2 + P@4) / min(2 relevant, 5) = (1/2 + 2/4) / 2 ; AP@2 = (1/2) / min(2, 2)
    assert m["map@5"] == pytest.approx(0.5) and m["map@2"] == pytest.approx(0.25)
    assert m["mrr@1"] == 0 and m["mrr@2"] == 0.5 and m["mrr@5"] == 0.5


def test_hand_worked_mean_over_queries_and_short_corpus():
    qrels = {"a": {"x": 1}, "b": {"y": 1, "z": 1}}
    # a: hit at rank 1; b: y at rank 3 only (z never retrieved). The corpus has 3 items: precision@5 still / 5.
    m = ranking_metrics([["x", "y", "z"], ["x", "w", "y"]], ["a", "b"], qrels, ks=(1, 5))
    assert m["hit@1"] == 0.5 and m["hit@5"] == 1.0
    assert m["precision@5"] == pytest.approx((1 / 5 + 1 / 5) / 2)
    assert m["recall@5"] == pytest.approx((1 + 1 / 2) / 2)
    assert m["mrr@5"] == pytest.approx((1 + 1 / 3) / 2)
    # reference AP@5 for b: P@3 = 1/3, divided by min(2, 5) = 2
    assert m["map@5"] == pytest.approx((1 + (1 / 3) / 2) / 2)


# ----------------------------------------------------------------------------------------------- pytrec_eval
def _random_case(seed: int, n_queries: int = 40, n_docs: int = 30):
    rng = random.Random(seed)
    docs = [f"d{i}" for i in range(n_docs)]
    qrels, runs = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 14))  # up to 14 judged: some queries have > 10 relevant
        grades = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
        grades[judged[0]] = max(1, grades[judged[0]])  # at least one relevant document
        qrels[qid] = grades
        runs[qid] = rng.sample(docs, n_docs)           # a full random ranking
    return qrels, runs


def _trec(qrels, runs, measures, depth=None):
    import pytrec_eval

    # strictly decreasing scores: trec_eval then keeps exactly our order (it breaks score ties by docno)
    run = {q: {d: float(1000 - r) for r, d in enumerate(ranking[:depth])} for q, ranking in runs.items()}
    return pytrec_eval.RelevanceEvaluator({q: {d: int(g) for d, g in j.items()} for q, j in qrels.items()},
                                          measures).evaluate(run)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_pytrec_eval(seed):
    pytest.importorskip("pytrec_eval")
    qrels, runs = _random_case(seed)
    qids = sorted(qrels)
    _, ours = ranking_metrics([runs[q] for q in qids], qids, qrels, KS, return_per_query=True)
    full = _trec(qrels, runs, {"success.1,5,10", "P.1,5,10", "recall.1,5,10", "ndcg_cut.1,5,10", "map_cut.1,5,10"})
    expo = _trec({q: {d: 2 ** g - 1 for d, g in j.items()} for q, j in qrels.items()}, runs, {"ndcg_cut.1,5,10"})
    for k in KS:
        cut = _trec(qrels, runs, {"recip_rank", "set_F"}, depth=k)  # MRR@k and F1@k: the run cut at k
        for i, q in enumerate(qids):
            n_rel = sum(g > 0 for g in qrels[q].values())
            assert ours[f"hit@{k}"][i] == pytest.approx(full[q][f"success_{k}"])
            assert ours[f"precision@{k}"][i] == pytest.approx(full[q][f"P_{k}"])
            assert ours[f"recall@{k}"][i] == pytest.approx(full[q][f"recall_{k}"])
            assert ours[f"ndcg_linear@{k}"][i] == pytest.approx(full[q][f"ndcg_cut_{k}"], abs=1e-4)
            assert ours[f"ndcg_exponential@{k}"][i] == pytest.approx(expo[q][f"ndcg_cut_{k}"], abs=1e-4)
            # trec's map_cut divides by all relevant documents, the reference's AP@k by min(relevant, k)
            assert ours[f"map@{k}"][i] * min(n_rel, k) / n_rel == pytest.approx(full[q][f"map_cut_{k}"], abs=1e-4)
            assert ours[f"mrr@{k}"][i] == pytest.approx(cut[q]["recip_rank"])
            assert ours[f"f1@{k}"][i] == pytest.approx(cut[q]["set_F"], abs=1e-4)


# ----------------------------------------------------------------------------------------------- search
def _naive_rank(q: np.ndarray, c: np.ndarray, k: int) -> list[list[int]]:
    """Descending score, ties by ascending index: Python's sort on (-score, index)."""
    out = []
    for row in q.astype(np.float64) @ c.astype(np.float64).T:
        out.append(sorted(range(len(row)), key=lambda i: (-row[i], i))[:k])
    return out


def test_exact_and_faiss_search_equal_a_naive_loop_with_ties():
    g = torch.Generator().manual_seed(0)
    corpus = torch.nn.functional.normalize(torch.randn(50, 8, generator=g), dim=-1)
    corpus[10] = corpus[3]        # exact duplicates: tied scores for every query
    corpus[40] = corpus[3]
    queries = torch.cat([corpus[3:4], torch.nn.functional.normalize(torch.randn(19, 8, generator=g), dim=-1)])
    expected = _naive_rank(queries.numpy(), corpus.numpy(), 10)
    for exact_max in (10_000, 0):  # torch path, faiss path
        scores, index = search(queries, corpus, 10, exact_max=exact_max, chunk_size=7)
        assert index.tolist() == expected
        assert scores.dtype == torch.float32
        assert torch.all(scores[:, :-1] >= scores[:, 1:])
    assert expected[0][:3] == [3, 10, 40]  # the query equal to three corpus items: ties by ascending index


def test_search_stays_fp32_under_bf16_autocast():
    # 1.0 and 1.0001 are the same number in bfloat16: a bf16 matmul would tie them and keep index 0 first.
    corpus = torch.tensor([[1.0, 0.0], [1.0001, 0.0]])
    query = torch.tensor([[1.0, 0.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (query @ corpus.T).dtype == torch.bfloat16  # the trap this guards against
        scores, index = search(query, corpus, 2)
    assert index.tolist() == [[1, 0]] and scores.dtype == torch.float32
    assert scores[0, 0] > scores[0, 1]


def test_evaluate_corpus_retrieval_end_to_end():
    corpus_ids = ["p0", "p1", "p2", "p3"]
    corpus = torch.eye(4)
    queries = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.0, 0.2, 0.0, 0.8]])   # q0 -> p0 > p1; q1 -> p3 > p1
    qrels = {"q0": {"p0": 1}, "q1": {"p1": 2, "p2": 1}}
    res = evaluate_corpus_retrieval(queries, corpus, ["q0", "q1"], corpus_ids, qrels, ks=(1, 2))
    assert res.ranked_ids[0][:2] == ["p0", "p1"] and res.ranked_ids[1][:2] == ["p3", "p1"]
    assert res.metrics["hit@1"] == 0.5 and res.metrics["hit@2"] == 1.0
    assert res.metrics["mrr@2"] == pytest.approx((1 + 0.5) / 2)
    assert res.ranked_scores[0][0] == pytest.approx(0.9)


def test_bad_judgements_and_inputs_are_refused_by_name():
    corpus = torch.eye(3)
    ids = ["a", "b", "c"]
    with pytest.raises(ValueError, match=r"no relevant document.*'q1'"):
        evaluate_corpus_retrieval(corpus[:2], corpus, ["q0", "q1"], ids, {"q0": {"a": 1}, "q1": {"b": 0}})
    with pytest.raises(ValueError, match=r"not in the corpus.*'q0', 'zz'"):
        evaluate_corpus_retrieval(corpus[:1], corpus, ["q0"], ids, {"q0": {"a": 1, "zz": 2}})
    with pytest.raises(ValueError, match="more than once"):
        evaluate_corpus_retrieval(corpus[:1], corpus, ["q0"], ["a", "a", "c"], {"q0": {"a": 1}})
    with pytest.raises(ValueError, match="3 corpus ids for 2"):
        evaluate_corpus_retrieval(corpus[:1], corpus[:2], ["q0"], ids, {"q0": {"a": 1}})
    with pytest.raises(ValueError, match="corpus is empty"):
        search(corpus[:1], corpus[:0], 5)
    with pytest.raises(ValueError, match="twice"):
        ranking_metrics([["a", "a"]], ["q0"], {"q0": {"a": 1}}, ks=(1, 2))
