"""The positive-aware filter for every sign of the positive's score (METHODS §2.4): hand-worked values at
negative, zero and positive s_pos, and the same survivors as sentence-transformers' `mine_hard_negatives`
(whose relative_margin is 1 − our `relative`) on embeddings built to give those scores."""

from __future__ import annotations

import numpy as np
import pytest

from mining.selection import positive_aware_mask

# Candidate scores around each positive score; thresholds worked by hand below.
CASES = {
    # s_pos = −0.2: relative 0.95 cuts at −0.2 − 0.2·0.05 = −0.21. The old rule `score < 0.95·s_pos` = −0.19
    # kept −0.195, which scores *above* the positive.
    "negative": (-0.2, [0.3, -0.1, -0.195, -0.205, -0.25, -0.5], [False, False, False, False, True, True]),
    # s_pos = 0: the cut is at 0 (kept: ≤ 0).
    "zero": (0.0, [0.2, 0.01, 0.0, -0.01, -0.4], [False, False, True, True, True]),
    # s_pos = 0.8: the cut is at 0.76 = 0.95·0.8, as in NV-Retriever's TopK-PercPos.
    "positive": (0.8, [0.95, 0.78, 0.761, 0.74, 0.5, -0.2], [False, False, False, True, True, True]),
}
# margin 0.05: keep score + 0.05 ≤ s_pos.
MARGIN_KEEP = {
    "negative": [False, False, False, False, True, True],   # cut at −0.25: −0.25 kept (equal)
    "zero": [False, False, False, False, True],             # cut at −0.05
    "positive": [False, False, False, True, True, True],    # cut at 0.75
}


@pytest.mark.parametrize("sign", list(CASES))
def test_relative_filter_hand_worked(sign):
    s_pos, scores, keep = CASES[sign]
    got = positive_aware_mask(np.array([scores]), np.array([s_pos]), relative=0.95)
    assert got.tolist() == [keep]
    # Nothing above the positive survives, whatever its sign (a tie at s_pos = 0 sits on the cut: kept).
    assert not (np.array(scores)[got[0]] > s_pos).any()


@pytest.mark.parametrize("sign", list(CASES))
def test_margin_filter_hand_worked(sign):
    s_pos, scores, _ = CASES[sign]
    got = positive_aware_mask(np.array([scores]), np.array([s_pos]), margin=0.05)
    assert got.tolist() == [MARGIN_KEEP[sign]]


def test_rows_with_different_signs_are_cut_independently():
    s_pos = np.array([CASES[s][0] for s in ("negative", "zero", "positive")])
    width = max(len(CASES[s][1]) for s in CASES)
    scores = np.full((3, width), np.nan)
    valid = np.zeros((3, width), dtype=bool)
    for i, s in enumerate(("negative", "zero", "positive")):
        scores[i, : len(CASES[s][1])] = CASES[s][1]
        valid[i, : len(CASES[s][1])] = True
    got = positive_aware_mask(scores, s_pos, valid=valid, relative=0.95)
    for i, s in enumerate(("negative", "zero", "positive")):
        assert got[i, : len(CASES[s][2])].tolist() == CASES[s][2]
        assert not got[i, len(CASES[s][2]):].any()  # padding (NaN, invalid) never kept


class _Table:
    """A sentence-transformers module that embeds each known text as a fixed vector."""

    @staticmethod
    def build(texts, vectors):
        import torch

        class Table(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.index = {t: i for i, t in enumerate(texts)}
                self.register_buffer("vectors", torch.tensor(vectors, dtype=torch.float32))

            def tokenize(self, batch, **kwargs):
                return {"row": torch.tensor([self.index[t] for t in batch])}

            def forward(self, features, **kwargs):
                features["sentence_embedding"] = self.vectors[features["row"]]
                return features

            def get_sentence_embedding_dimension(self):
                return self.vectors.shape[1]

            get_embedding_dimension = get_sentence_embedding_dimension

        return Table()


@pytest.mark.parametrize("sign", list(CASES))
@pytest.mark.parametrize("relative", [0.95, 0.8])
def test_same_survivors_as_sentence_transformers(sign, relative):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    s_pos, scores, _ = CASES[sign]

    def unit(c):  # a 2-D unit vector with cosine c to the query (1, 0)
        return [c, float(np.sqrt(1 - c * c))]

    negatives = [f"n{i}" for i in range(len(scores))]
    texts = ["q", "pos", *negatives]
    model = SentenceTransformer(modules=[_Table.build(texts, [[1.0, 0.0], unit(s_pos), *map(unit, scores)])],
                                device="cpu")
    mined = mine_hard_negatives(Dataset.from_dict({"anchor": ["q"], "positive": ["pos"]}), model, corpus=negatives,
                                relative_margin=1 - relative, num_negatives=len(scores), range_max=len(scores),
                                sampling_strategy="top", output_format="triplet", verbose=False)
    theirs = sorted(row["negative"] for row in mined)
    # Our filter on the same float32 cosines the library computed.
    s = np.array([[1.0, 0.0]], np.float32) @ np.array([unit(c) for c in [s_pos, *scores]], np.float32).T
    ours = positive_aware_mask(s[:, 1:].astype(np.float64), s[:, 0].astype(np.float64), relative=relative)
    assert sorted(n for n, k in zip(negatives, ours[0]) if k) == theirs
