"""Quantised embeddings for evaluation (`eval.quantize=int8|binary`), for single-vector [N, d] and multi-vector
[N, L, d] embeddings alike: the storage/score trade-off of a quantised index, measured with the MMEB protocol.

Codes are sentence-transformers' `quantize_embeddings` (tested equal on the same vectors):
- int8: per dimension, the range [min, max] over the documents' vectors (every token of every document for
  multi-vector) is cut into 256 buckets, code = clip(⌊(x − min) / step⌋, 0, 255) − 128, step = (max − min) / 255
  (1 where max = min); 1 byte per dimension.
- binary: the sign bits x > 0 packed 8 per byte (`np.packbits`, big-endian bits), minus 128 as int8; d/8 bytes.

Scoring, two stages as sentence-transformers' `semantic_search_faiss/usearch(rescore=True)`:
1. every candidate is scored on the quantised side: queries are quantised with the documents' int8 ranges (integer
   codes, dot or MaxSim), or binarised (±1 bits: the dot is d − 2·Hamming distance);
2. the top ⌈k · rescore_multiplier⌉ of stage 1 (k = 1 for P@1 rows, the deepest cutoff for corpus retrieval) are
   re-scored with the float query against the stored codes read back as sentence-transformers'
   `_dequantize_embeddings` does: int8 as min + (code + 128) · step (the bucket's lower edge), binary as {0, 1}
   bits (for a fixed query this ranks as ±1 bits do).
   Candidates outside the re-scored set rank below it, in stage-1 order.
Multi-vector documents keep their token mask: a quantised "no token" row stays no token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PRECISIONS = ("int8", "binary")
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int32)


def token_rows(x: torch.Tensor) -> torch.Tensor:
    """The vectors of `x` that count: every row of [N, d]; the non-zero rows of [N, L, d] (tokens)."""
    return x if x.ndim == 2 else x[x.ne(0).any(dim=-1)]


def int8_ranges(documents: torch.Tensor) -> torch.Tensor:
    """[2, d]: per-dimension min and max over the documents' vectors (sentence-transformers' calibration)."""
    rows = token_rows(documents).float()
    if rows.shape[0] == 0:
        raise ValueError("no document vector to calibrate int8 ranges on")
    return torch.stack([rows.min(dim=0).values, rows.max(dim=0).values])


def quantize(x: torch.Tensor, precision: str, ranges: torch.Tensor | None = None) -> torch.Tensor:
    """int8 codes [..., d] or packed binary [..., ⌈d/8⌉] (int8), as sentence-transformers' `quantize_embeddings`."""
    x = x.float()
    if precision == "int8":
        if ranges is None:
            raise ValueError("int8 quantisation needs ranges (int8_ranges of the documents)")
        starts = ranges[0].float()
        steps = (ranges[1].float() - starts) / 255
        steps = torch.where(steps == 0, torch.ones_like(steps), steps)
        return (torch.clamp(torch.floor((x - starts) / steps), 0, 255) - 128).to(torch.int8)
    if precision == "binary":
        d = x.shape[-1]
        bits = (x > 0).to(torch.int32)
        pad = (-d) % 8
        if pad:
            bits = torch.nn.functional.pad(bits, (0, pad))
        packed = (bits.reshape(*bits.shape[:-1], -1, 8) * _BIT_WEIGHTS).sum(dim=-1)  # 0..255, big-endian
        return (packed - 128).to(torch.int8)
    raise ValueError(f"eval.quantize must be one of {PRECISIONS} or null, got {precision!r}")


def unpack_bits(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Packed binary codes → {0, 1} float bits [..., dim]."""
    packed = codes.to(torch.int32) + 128
    bits = (packed.unsqueeze(-1) // _BIT_WEIGHTS) % 2
    return bits.reshape(*codes.shape[:-1], -1)[..., :dim].float()


@dataclass
class QuantizedDocuments:
    """Documents as a quantised index: codes, the int8 ranges, the token mask (multi-vector) and the width."""

    codes: torch.Tensor
    precision: str
    ranges: torch.Tensor | None
    mask: torch.Tensor | None
    dim: int

    @classmethod
    def build(cls, documents: torch.Tensor, precision: str) -> QuantizedDocuments:
        ranges = int8_ranges(documents) if precision == "int8" else None
        mask = documents.ne(0).any(dim=-1) if documents.ndim == 3 else None
        return cls(quantize(documents, precision, ranges), precision, ranges, mask, documents.shape[-1])

    def _masked(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mask is None else x * self.mask.unsqueeze(-1).to(x.dtype)

    def stage1_documents(self) -> torch.Tensor:
        """What stage 1 scores against: int8 codes as numbers, or ±1 bits."""
        if self.precision == "int8":
            return self._masked(self.codes.float())
        return self._masked(unpack_bits(self.codes, self.dim) * 2 - 1)

    def stage1_queries(self, queries: torch.Tensor) -> torch.Tensor:
        mask = queries.ne(0).any(dim=-1, keepdim=True).float() if queries.ndim == 3 else 1.0
        if self.precision == "int8":
            return quantize(queries, "int8", self.ranges).float() * mask
        return (unpack_bits(quantize(queries, "binary"), self.dim) * 2 - 1) * mask

    def rescore_documents(self) -> torch.Tensor:
        """What the float queries re-score against: int8 codes dequantised (bucket lower edges), or {0, 1} bits."""
        if self.precision == "int8":
            starts = self.ranges[0]
            steps = (self.ranges[1] - starts) / 255
            steps = torch.where(steps == 0, torch.ones_like(steps), steps)
            return self._masked(starts + (self.codes.float() + 128) * steps)
        return self._masked(unpack_bits(self.codes, self.dim))


def bytes_per_vector(dim: int, precision: str | None) -> int:
    if precision is None:
        return 4 * dim  # float32
    return dim if precision == "int8" else math.ceil(dim / 8)
