"""How the protocol turns embeddings into scores, and what the scored documents cost to store: one object per
evaluation, chosen by the model and `eval.*` settings.

- single-vector [N, d]: the dot product (cosine for L2-normalised embeddings; `evaluation/scoring.py`,
  `evaluation/retrieval.py`);
- multi-vector [N, L, d]: the model's late interaction, MaxSim or MeanMaxSim (`evaluation/late_interaction.py`),
  documents optionally token-pooled first (`eval.token_pooling`, `embedders/token_pooling.py`);
- either, quantised (`eval.quantize=int8|binary`, two-stage with rescoring: `evaluation/quantization.py`).

Storage per document (`storage`): vectors (1, or the document's scored tokens) × bytes per vector (4·d float32,
d int8, ⌈d/8⌉ binary), averaged over the scored documents; reported beside every dataset's score.
"""

from __future__ import annotations

import math

import torch

from embedders.token_pooling import pool_documents

from .late_interaction import score_rows_maxsim, search_maxsim
from .quantization import PRECISIONS, QuantizedDocuments, bytes_per_vector
from .retrieval import search
from .scoring import score_rows

#: eval.rescore_multiplier default: sentence-transformers' `rescore_multiplier`.
DEFAULT_RESCORE_MULTIPLIER = 2.0


class EmbeddingScorer:
    """Scores of queries against documents (rows of candidates, or a corpus), and the documents' storage."""

    def __init__(self, late_interaction: str | None = None, quantize: str | None = None,
                 rescore_multiplier: float = DEFAULT_RESCORE_MULTIPLIER, token_pooling: float | None = None):
        if quantize is not None and quantize not in PRECISIONS:
            raise ValueError(f"eval.quantize must be one of {PRECISIONS} or null, got {quantize!r}")
        if not (isinstance(rescore_multiplier, (int, float)) and rescore_multiplier >= 1):
            raise ValueError(f"eval.rescore_multiplier must be a number ≥ 1, got {rescore_multiplier!r}")
        if token_pooling is not None and late_interaction is None:
            raise ValueError("eval.token_pooling applies to multi-vector models (model.pooling=multi_vector); "
                             "set it to null for this single-vector model")
        self.late_interaction = late_interaction
        self.mean = late_interaction == "meanmaxsim"
        self.quantize = quantize
        self.rescore_multiplier = float(rescore_multiplier)
        self.token_pooling = token_pooling

    @classmethod
    def for_model(cls, embedder, settings) -> EmbeddingScorer:
        head = getattr(embedder, "head", None)
        return cls(head.similarity if head is not None else None, getattr(settings, "quantize", None),
                   getattr(settings, "rescore_multiplier", None) or DEFAULT_RESCORE_MULTIPLIER,
                   getattr(settings, "token_pooling", None))

    # ------------------------------------------------------------------ the plain scores
    def documents(self, docs: torch.Tensor) -> torch.Tensor:
        """The documents as they are indexed: token-pooled when asked."""
        return pool_documents(docs, self.token_pooling) if self.token_pooling is not None else docs

    def _rows(self, q, c, q_idx, c_idx):
        if q.ndim == 3:
            return score_rows_maxsim(q, c, q_idx, c_idx, self.mean)
        return score_rows(q, c, q_idx, c_idx)

    def _search(self, q, c, k):
        if q.ndim == 3:
            return search_maxsim(q, c, k, self.mean)
        return search(q, c, k)

    def _pairs(self, q: torch.Tensor, docs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """scores[i, j] = s(q_i, docs[index[i, j]])."""
        if q.ndim == 3:
            return score_rows_maxsim(q, docs, torch.arange(q.shape[0]), index, self.mean)
        with torch.autocast(q.device.type, enabled=False):
            return torch.einsum("qd,qkd->qk", q.float(), docs.float()[index])

    # ------------------------------------------------------------------ protocol entry points
    def score_rows(self, q: torch.Tensor, c: torch.Tensor, q_idx: torch.Tensor, c_idx: torch.Tensor) -> torch.Tensor:
        """[N, K] scores of every row's candidates (-inf = no candidate); `c` are already `documents(...)`."""
        if self.quantize is None:
            return self._rows(q, c, q_idx, c_idx)
        quant = QuantizedDocuments.build(c, self.quantize)
        stage1 = self._rows(quant.stage1_queries(q), quant.stage1_documents(), q_idx, c_idx)
        rescored = self._rows(q, quant.rescore_documents(), q_idx, c_idx)
        return _two_stage(stage1, rescored, math.ceil(self.rescore_multiplier))

    def search(self, queries: torch.Tensor, corpus: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k corpus items of every query; `corpus` is already `documents(...)`."""
        if self.quantize is None:
            return self._search(queries, corpus, k)
        quant = QuantizedDocuments.build(corpus, self.quantize)
        depth = min(corpus.shape[0], math.ceil(k * self.rescore_multiplier))
        _, index = self._search(quant.stage1_queries(queries), quant.stage1_documents(), depth)
        index = torch.sort(index, dim=1).values  # ascending ids: the stable sort below breaks ties by id
        scores = self._pairs(queries, quant.rescore_documents(), index)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        return scores.gather(1, order), index.gather(1, order)

    def storage(self, docs: torch.Tensor) -> dict:
        """What one scored document costs in the index: vectors and bytes (averages over `docs`)."""
        n = max(docs.shape[0], 1)
        vectors = float(docs.ne(0).any(dim=-1).sum()) / n if docs.ndim == 3 else 1.0
        per_vector = bytes_per_vector(docs.shape[-1], self.quantize)
        return {"vectors_per_doc": vectors, "bytes_per_doc": vectors * per_vector, "dim": int(docs.shape[-1]),
                "precision": self.quantize or "float32", "token_pooling": self.token_pooling}


def _two_stage(stage1: torch.Tensor, rescored: torch.Tensor, depth: int) -> torch.Tensor:
    """Row scores after rescoring: each row's top `depth` candidates by stage 1 take their rescored score, the others
    rank below all of them in stage-1 order (finite, so a missed ground truth still has a score); -inf stays."""
    valid = torch.isfinite(stage1)
    order = torch.sort(stage1, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    top = (rank < depth) & valid
    floor = rescored.masked_fill(~top, float("inf")).min(dim=1, keepdim=True).values
    floor = torch.where(torch.isfinite(floor), floor, torch.zeros_like(floor))
    below = floor - 1.0 - rank.float()
    out = torch.where(top, rescored, below)
    return out.masked_fill(~valid, float("-inf"))
