"""MaxSim scoring for the MMEB protocol: MMEB v1 row scoring (each row's candidates) and exact corpus top-k
(MMEB-V2 retrieval) for multi-vector embeddings ([N, L, d], zero rows = no token), in fp32, in blocks so that no
rows × candidates × Lq × Ld interaction larger than `block_elements` is ever materialised (CPU and GPU alike: the
blocks run on the embeddings' device).

Rows: the candidates of a block of rows are scored once each (classification rows share their label set), with the
loss's MaxSim (`losses.late_interaction.maxsim`), then gathered into the padded [N, K] matrix (-inf = no candidate).
Search: the corpus is scanned in chunks, a running top-k merged per chunk with a stable sort, so the result is the
exact top-k with ties ordered by ascending corpus index (the rule of `evaluation/retrieval.py`).
"""

from __future__ import annotations

import torch

from losses.late_interaction import BLOCK_ELEMENTS, maxsim


def score_rows_maxsim(query_emb: torch.Tensor, candidate_emb: torch.Tensor, query_ids: torch.Tensor,
                      candidate_ids: torch.Tensor, mean: bool = False,
                      block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    """scores[i, j] = MaxSim(query_emb[query_ids[i]], candidate_emb[candidate_ids[i, j]]) (-inf where the id is -1)."""
    n, k = candidate_ids.shape
    out = torch.full((n, k), float("-inf"), dtype=torch.float32)
    if n == 0 or k == 0:
        return out
    per_pair = max(1, query_emb.shape[1] * candidate_emb.shape[1])
    # A block of rows scores its distinct queries against its distinct candidates at once.
    rows = max(1, min(n, block_elements // (per_pair * k)))
    for s in range(0, n, rows):
        ids = candidate_ids[s : s + rows]
        valid = ids >= 0
        uniq_c, inv_c = torch.unique(ids.clamp(min=0), return_inverse=True)
        uniq_q, inv_q = torch.unique(query_ids[s : s + rows], return_inverse=True)
        block = maxsim(query_emb[uniq_q], candidate_emb[uniq_c], mean, block_elements).float().cpu()  # [q, c]
        out[s : s + rows] = block[inv_q].gather(1, inv_c).masked_fill(~valid, float("-inf"))
    return out


def search_maxsim(queries: torch.Tensor, corpus: torch.Tensor, k: int, mean: bool = False,
                  block_elements: int = BLOCK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-`k` corpus items of every query by MaxSim: (scores [Q, k'], indices [Q, k']), k' = min(k, N)."""
    if queries.ndim != 3 or corpus.ndim != 3 or queries.shape[-1] != corpus.shape[-1]:
        raise ValueError(f"queries {tuple(queries.shape)} and corpus {tuple(corpus.shape)} must be [Q, Lq, d] and "
                         "[N, Ld, d] token vectors")
    if corpus.shape[0] == 0:
        raise ValueError("the corpus is empty: nothing to rank the queries against")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(k, corpus.shape[0])
    n_q, n_c = queries.shape[0], corpus.shape[0]
    per_pair = max(1, queries.shape[1] * corpus.shape[1])
    cols = max(k, min(n_c, block_elements // per_pair))
    top_s = torch.empty(n_q, 0)
    top_i = torch.empty(n_q, 0, dtype=torch.long)
    for c in range(0, n_c, cols):
        part = maxsim(queries, corpus[c : c + cols], mean, block_elements).float().cpu()
        # Earlier chunks hold lower corpus indices: a stable sort keeps them first among equal scores.
        scores = torch.cat([top_s, part], dim=1)
        index = torch.cat([top_i, torch.arange(c, c + part.shape[1]).expand(n_q, -1)], dim=1)
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
        top_s, top_i = scores.gather(1, order), index.gather(1, order)
    return top_s, top_i
