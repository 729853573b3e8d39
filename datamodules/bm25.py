"""Okapi BM25, the lexical ranking the data builders use to pick hard candidates without a model (the
docstrings eval's `eval_negatives="bm25"`): deterministic, pure numpy.

score(q, d) = Σ_{t ∈ q} idf(t) · tf(t, d) · (k1 + 1) / (tf(t, d) + k1 · (1 − b + b · |d| / avgdl)),
idf(t) = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))  (the Lucene form: never negative),
with k1 = 1.2, b = 0.75 (Robertson and Zaragoza's usual values); a query term counts once per occurrence in the
query. Tokens: lower-case runs of word characters (`tokenize`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

_WORD = re.compile(r"\w+")
K1, B = 1.2, 0.75


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25:
    """An index of `documents`; `scores(query)` is the BM25 score of every document, in document order."""

    def __init__(self, documents: Sequence[str], k1: float = K1, b: float = B):
        if not documents:
            raise ValueError("BM25 needs at least one document")
        self.k1, self.b = float(k1), float(b)
        tokens = [tokenize(d) for d in documents]
        self.n = len(tokens)
        lengths = np.array([len(t) for t in tokens], dtype=float)
        avgdl = float(lengths.mean()) or 1.0
        norm = self.k1 * (1 - self.b + self.b * lengths / avgdl)
        postings: dict[str, tuple[list[int], list[float]]] = {}
        for i, toks in enumerate(tokens):
            for term, tf in Counter(toks).items():
                docs, tfs = postings.setdefault(term, ([], []))
                docs.append(i)
                tfs.append(tf)
        # Per term: the documents holding it and their tf·(k1+1)/(tf + norm) weights (idf applied at query time).
        self.postings = {}
        self.idf = {}
        for term, (docs, tfs) in postings.items():
            d = np.asarray(docs)
            tf = np.asarray(tfs, dtype=float)
            self.postings[term] = (d, tf * (self.k1 + 1) / (tf + norm[d]))
            df = len(docs)
            self.idf[term] = math.log(1 + (self.n - df + 0.5) / (df + 0.5))

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.n)
        for term in tokenize(query):
            if term in self.postings:
                docs, weights = self.postings[term]
                out[docs] += self.idf[term] * weights
        return out

    def top(self, query: str, k: int, keep: Callable[[int], bool] | None = None) -> list[int]:
        """The `k` best documents for `query` by descending score, ties by ascending index, among those for which
        `keep(index)` holds (all when None)."""
        s = self.scores(query)
        out = []
        for i in np.lexsort((np.arange(self.n), -s)).tolist():   # score descending, then index ascending
            if keep is None or keep(i):
                out.append(i)
                if len(out) == k:
                    break
        return out
