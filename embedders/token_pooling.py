"""Token pooling of multi-vector documents: fewer vectors per document at a small loss of MaxSim score
(hierarchical pooling of colpali-engine's `HierarchicalTokenPooler` and sentence-transformers'
`HierarchicalTokenPooling`; Clavié et al., 2024, "Reducing the Footprint of Multi-Vector Retrieval with Minimal
Performance Impact via Token Pooling").

Per document with n tokens: Ward-linkage hierarchical clustering of its token vectors on the cosine distance
1 − ⟨x_i, x_j⟩ (clamped to [0, 2]), cut into max(⌊n / factor⌋, 1) clusters (`fcluster`, `maxclust`); each cluster is
replaced by the mean of its vectors, L2-normalised. Clusters come in the order of their labels. This is
sentence-transformers' `HierarchicalTokenPooling(pool_factor=factor, num_protected_tokens=0,
normalize_embeddings=True)` (tested equal); colpali-engine differs in its linkage input (euclidean distances).
Storage falls by about `factor`; what it costs in score is measured in docs/late_interaction.md.
"""

from __future__ import annotations

import torch
from torch import nn


def pool_document_tokens(tokens: torch.Tensor, factor: float) -> torch.Tensor:
    """[n, d] unit token vectors of one document → [k, d] pooled ones, k = max(⌊n / factor⌋, 1) (or fewer on ties)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = tokens.shape[0]
    target = max(int(n // factor), 1)
    if factor <= 1 or n <= 1 or target >= n:
        return nn.functional.normalize(tokens, dim=-1)
    values = tokens.detach().float().cpu()
    distances = (1 - values @ values.T).clamp_(0, 2).numpy()
    labels = fcluster(linkage(squareform(distances, checks=False), method="ward"), t=target, criterion="maxclust")
    _, dense = torch.unique(torch.from_numpy(labels.astype("int64")), return_inverse=True)
    k = int(dense.max()) + 1
    sums = values.new_zeros(k, values.shape[1]).index_add_(0, dense, values)
    counts = torch.bincount(dense, minlength=k).clamp_min(1).to(values.dtype)
    return nn.functional.normalize(sums / counts[:, None], dim=-1).to(tokens.dtype)


def pool_documents(documents: torch.Tensor, factor: float | None) -> torch.Tensor:
    """[N, L, d] documents (zero rows = no token) → [N, L', d] pooled, zero-padded; `factor` None or 1: unchanged."""
    if factor is None or factor == 1:
        return documents
    if factor < 1:
        raise ValueError(f"eval.token_pooling must be ≥ 1 (keep about 1/factor of each document's tokens), got {factor}")
    if documents.ndim != 3:
        raise ValueError("token pooling applies to multi-vector embeddings [N, L, d] (model.pooling=multi_vector)")
    pooled = [pool_document_tokens(doc[doc.ne(0).any(dim=-1)], factor) for doc in documents]
    width = max((p.shape[0] for p in pooled), default=0)
    out = documents.new_zeros(documents.shape[0], max(width, 1), documents.shape[2])
    for i, p in enumerate(pooled):
        out[i, : p.shape[0]] = p
    return out
