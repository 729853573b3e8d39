"""datamodules/bm25.py against a hand-worked example and a direct transcription of the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datamodules.bm25 import BM25, tokenize

DOCS = ["the cat sat on the mat", "the dog sat", "cats and dogs", "a mat of cat hair cat"]


def naive_bm25(query: str, docs: list[str], k1: float = 1.2, b: float = 0.75) -> list[float]:
    toks = [tokenize(d) for d in docs]
    avgdl = sum(len(t) for t in toks) / len(toks)
    out = []
    for t in toks:
        s = 0.0
        for term in tokenize(query):
            df = sum(term in u for u in toks)
            idf = math.log(1 + (len(toks) - df + 0.5) / (df + 0.5))
            tf = t.count(term)
            s += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(t) / avgdl))
        out.append(s)
    return out


def test_hand_worked_single_term():
    # "cat": df = 2 of N = 4 → idf = ln(1 + 2.5/2.5) = ln 2; lengths 6, 3, 3, 6 → avgdl 4.5; doc 0: tf 1, |d| 6.
    idf = math.log(2)
    doc0 = idf * 1 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 6 / 4.5))
    doc3 = idf * 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 6 / 4.5))   # tf 2, |d| 6
    s = BM25(DOCS).scores("cat")
    assert s[0] == pytest.approx(doc0) and s[3] == pytest.approx(doc3) and s[1] == s[2] == 0.0


@pytest.mark.parametrize("query", ["cat mat", "The dog SAT on a mat", "cats", "unknown words only", "cat cat"])
def test_scores_equal_the_formula(query):
    np.testing.assert_allclose(BM25(DOCS).scores(query), naive_bm25(query, DOCS), rtol=1e-12)


def test_top_orders_by_score_then_index_and_honours_keep():
    index = BM25(DOCS)
    s = index.scores("cat mat")
    assert index.top("cat mat", 4) == sorted(range(4), key=lambda i: (-s[i], i))
    assert index.top("cat mat", 2, keep=lambda i: i != 0) == [i for i in sorted(range(4), key=lambda i: (-s[i], i))
                                                             if i != 0][:2]
    assert index.top("zzz", 2) == [0, 1]   # all tied at 0: by index
