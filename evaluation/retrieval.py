"""Corpus-level retrieval (MMEB-V2 video and visual-document retrieval): every query is ranked against a
whole shared corpus, and the ranking is scored against graded relevance judgements (qrels).

Search. `search` returns each query's top-k corpus indices by inner product (cosine for the L2-normalised
embeddings an Embedder produces). Scores are computed in float32 with autocast disabled, whatever the
caller's precision context (a bf16 matmul would reorder near-ties). Corpora up to `exact_max` items are
searched exactly in torch, in query chunks; larger ones with a faiss exact inner-product index
(`IndexFlatIP`), whose candidates are then re-scored in float32 torch and re-sorted.

Ties (documented, deterministic). Items are ordered by descending score, equal scores by ascending corpus
index (a stable sort). The reference evaluator (VLM2Vec `eval.py`) uses `np.argsort(-scores)`, whose order
among ties is unspecified. With the faiss path, ties are resolved this way among the `k + tie_margin`
candidates faiss returns; an item tied with the k-th one but beyond that margin may be left out.

Metrics (`ranking_metrics`), for every cutoff k in `ks` (default 1, 5, 10), averaged over queries, as
fractions in [0, 1] with the reference's key names (`src/utils/eval_utils/metrics.py` of VLM2Vec):
- a document is relevant when its grade is > 0 (the reference's `load_qrels_mapping` drops grades <= 0);
- `hit@k`: 1 if a relevant document is in the top k;
- `precision@k` = relevant in top k / k (also when the corpus has fewer than k items, as trec_eval);
- `recall@k` = relevant in top k / number of relevant;
- `f1@k`: harmonic mean of precision@k and recall@k (0 when both are 0);
- `ndcg_linear@k`: DCG = sum over ranks i <= k of gain(grade_i) / log2(i + 1), gain = grade, normalised by
  the DCG of the ideal order of the query's grades (cut at k); `ndcg_exponential@k`: gain = 2**grade - 1;
- `map@k`: sum of precision@i at the ranks i <= k that hold a relevant document, divided by
  min(number of relevant, k) — the reference's AP@k. trec_eval's `map_cut_k` divides by the number of
  relevant instead; the two agree whenever a query has at most k relevant documents;
- `mrr@k`: 1 / rank of the first relevant document if it is within the top k, else 0.
Every query must have at least one relevant document, and every judged document must be in the corpus:
anything else is refused by name (the reference crashes with a KeyError on the former).
Note: for graded judgements the reference pairs grades with a *set*-reordered label list
(`true_labels = list(set(true_labels))` before `ndcg_at_k(..., rel_scores)`), so its graded NDCG can depend
on Python's string hashing; here every grade stays with its own document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)
#: Corpora larger than this are searched with faiss (exact IndexFlatIP) instead of a dense torch matmul.
EXACT_MAX_CORPUS = 50_000
METRICS = ("hit", "precision", "recall", "f1", "ndcg_linear", "ndcg_exponential", "map", "mrr")

Qrels = Mapping[str, Mapping[str, float]]


def _fp32_scores(queries: torch.Tensor, corpus: torch.Tensor) -> torch.Tensor:
    with torch.autocast(device_type=queries.device.type, enabled=False):
        return queries.float() @ corpus.float().T


def _stable_top(scores: torch.Tensor, k: int, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row by descending score, ties by ascending position (stable sort). `index` maps positions
    to corpus indices (faiss candidates); it must be ascending within each row for the tie rule to hold."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    top_scores = torch.gather(scores, 1, order)
    return top_scores, (torch.gather(index, 1, order) if index is not None else order)


def search(queries: torch.Tensor, corpus: torch.Tensor, k: int, *, exact_max: int = EXACT_MAX_CORPUS,
           chunk_size: int = 1024, tie_margin: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` corpus items of every query: (scores [Q, k'] float32, indices [Q, k'] int64), k' = min(k, N)."""
    if queries.ndim != 2 or corpus.ndim != 2 or queries.shape[1] != corpus.shape[1]:
        raise ValueError(f"queries {tuple(queries.shape)} and corpus {tuple(corpus.shape)} must be [Q, d] and [N, d]")
    if corpus.shape[0] == 0:
        raise ValueError("the corpus is empty: nothing to rank the queries against")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, corpus.shape[0])
    if corpus.shape[0] <= exact_max:
        out_s, out_i = [], []
        for s in range(0, queries.shape[0], chunk_size):
            top_s, top_i = _stable_top(_fp32_scores(queries[s : s + chunk_size], corpus), k)
            out_s.append(top_s.cpu())
            out_i.append(top_i.cpu())
        if not out_s:
            return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
        return torch.cat(out_s), torch.cat(out_i)
    return _faiss_search(queries, corpus, k, tie_margin)


def _faiss_search(queries: torch.Tensor, corpus: torch.Tensor, k: int, tie_margin: int):
    import faiss

    q = np.ascontiguousarray(queries.detach().float().cpu().numpy())
    c = np.ascontiguousarray(corpus.detach().float().cpu().numpy())
    index = faiss.IndexFlatIP(c.shape[1])
    index.add(c)
    _, cand = index.search(q, min(k + tie_margin, c.shape[0]))
    cand = torch.from_numpy(np.sort(cand, axis=1)).long()  # ascending ids: the stable sort breaks ties by id
    if (cand < 0).any():
        raise RuntimeError("faiss returned fewer candidates than asked; the corpus index is inconsistent")
    # Re-score the candidates in float32 torch, so both search paths order items by the same numbers.
    qt, ct = queries.detach().float().cpu(), corpus.detach().float().cpu()
    with torch.autocast(device_type="cpu", enabled=False):
        scores = torch.einsum("qd,qkd->qk", qt, ct[cand])
    return _stable_top(scores, k, cand)


# ----------------------------------------------------------------------------------------------- metrics
@dataclass
class RetrievalResult:
    """Aggregate metrics plus, per query, the ranked corpus ids (what `<dataset>_pred.jsonl` records)."""

    metrics: dict[str, float]
    ranked_ids: list[list[str]] = field(repr=False)
    ranked_scores: list[list[float]] = field(repr=False)
    per_query: dict[str, np.ndarray] = field(repr=False)


def _check_qrels(query_ids: Sequence[str], corpus_ids: Sequence[str] | None, qrels: Qrels) -> None:
    missing = [q for q in query_ids if not any(g > 0 for g in (qrels.get(q) or {}).values())]
    if missing:
        raise ValueError(f"{len(missing)} of {len(query_ids)} queries have no relevant document (grade > 0) in the "
                         f"relevance judgements, e.g. {missing[:5]}; fix the qrels or drop these queries")
    if corpus_ids is not None:
        known = set(corpus_ids)
        unknown = [(q, d) for q in query_ids for d, g in qrels[q].items() if g > 0 and d not in known]
        if unknown:
            raise ValueError(f"{len(unknown)} relevant (query, document) judgements name documents that are not in "
                             f"the corpus, e.g. {unknown[:5]}; the corpus must hold every judged document")


def ranking_metrics(ranked_ids: Sequence[Sequence[str]], query_ids: Sequence[str], qrels: Qrels,
                    ks: Sequence[int] = DEFAULT_KS, return_per_query: bool = False):
    """Score rankings (each query's corpus ids, best first, at least max(ks) long unless the corpus is
    shorter) against graded qrels. Returns {"<metric>@<k>": mean over queries} (and per-query arrays)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"cutoffs must be >= 1, got {ks}")
    if len(ranked_ids) != len(query_ids):
        raise ValueError(f"{len(ranked_ids)} rankings for {len(query_ids)} queries")
    _check_qrels(query_ids, None, qrels)
    depth = ks[-1]
    n = len(query_ids)
    grades = np.zeros((n, depth))        # grade of the document at each rank (0 = not relevant / no document)
    ideal = np.zeros((n, depth))         # the query's grades in the ideal order
    num_rel = np.zeros(n)
    for row, (qid, ranking) in enumerate(zip(query_ids, ranked_ids)):
        judged = {d: float(g) for d, g in qrels[qid].items() if g > 0}
        num_rel[row] = len(judged)
        ranking = list(ranking)[:depth]
        if len(set(ranking)) != len(ranking):
            raise ValueError(f"the ranking of query {qid!r} lists a document twice")
        grades[row, : len(ranking)] = [judged.get(d, 0.0) for d in ranking]
        best = sorted(judged.values(), reverse=True)[:depth]
        ideal[row, : len(best)] = best
    relevant = (grades > 0).astype(float)
    hits_cum = np.cumsum(relevant, axis=1)                     # relevant documents within the top i
    ranks = np.arange(1, depth + 1, dtype=float)
    discount = 1.0 / np.log2(ranks + 1.0)
    prec_at_rank = hits_cum / ranks
    first_hit = np.where(relevant.any(axis=1), relevant.argmax(axis=1) + 1, np.inf)
    out, per_query = {}, {}
    for k in ks:
        hits = hits_cum[:, k - 1]
        values = {
            "hit": (hits > 0).astype(float),
            "precision": hits / k,
            "recall": hits / num_rel,
        }
        p, r = values["precision"], values["recall"]
        values["f1"] = np.divide(2 * p * r, p + r, out=np.zeros(n), where=(p + r) > 0)
        for name, gain in (("ndcg_linear", lambda g: g), ("ndcg_exponential", lambda g: np.exp2(g) - 1.0)):
            dcg = (gain(grades[:, :k]) * discount[:k]).sum(axis=1)
            idcg = (gain(ideal[:, :k]) * discount[:k]).sum(axis=1)
            values[name] = dcg / idcg
        values["map"] = (prec_at_rank[:, :k] * relevant[:, :k]).sum(axis=1) / np.minimum(num_rel, k)
        values["mrr"] = np.where(first_hit <= k, 1.0 / first_hit, 0.0)
        for name in METRICS:
            out[f"{name}@{k}"] = float(values[name].mean()) if n else 0.0
            per_query[f"{name}@{k}"] = values[name]
    return (out, per_query) if return_per_query else out


def evaluate_corpus_retrieval(query_embeddings: torch.Tensor, corpus_embeddings: torch.Tensor,
                              query_ids: Sequence[str], corpus_ids: Sequence[str], qrels: Qrels,
                              ks: Sequence[int] = DEFAULT_KS, *, exact_max: int = EXACT_MAX_CORPUS,
                              search_fn=None) -> RetrievalResult:
    """Rank every query against the whole corpus and score the rankings against `qrels`. `search_fn(queries, corpus,
    k)` replaces the dot-product `search` (MaxSim, quantised indexes: `evaluation/scorers.py`)."""
    if len(query_ids) != query_embeddings.shape[0] or len(corpus_ids) != corpus_embeddings.shape[0]:
        raise ValueError(f"{len(query_ids)} query ids for {query_embeddings.shape[0]} query embeddings, "
                         f"{len(corpus_ids)} corpus ids for {corpus_embeddings.shape[0]} corpus embeddings")
    duplicates = len(corpus_ids) - len(set(corpus_ids))
    if duplicates:
        raise ValueError(f"the corpus lists {duplicates} document id(s) more than once; ids must be unique")
    _check_qrels(query_ids, corpus_ids, qrels)
    if search_fn is None:
        scores, index = search(query_embeddings, corpus_embeddings, max(ks), exact_max=exact_max)
    else:
        scores, index = search_fn(query_embeddings, corpus_embeddings, max(ks))
    ranked = [[corpus_ids[i] for i in row] for row in index.tolist()]
    metrics, per_query = ranking_metrics(ranked, query_ids, qrels, ks, return_per_query=True)
    return RetrievalResult(metrics, ranked, scores.tolist(), per_query)
