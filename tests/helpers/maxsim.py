"""Multi-vector test helpers: random token vectors with padding rows, and MaxSim computed one pair at a time
(the independent side of the tests of blocked MaxSim in evaluation and mining)."""

from __future__ import annotations

import torch


def tokens(n, length, d, seed, min_len=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, length, d, generator=g), dim=-1)
    lens = torch.randint(min_len, length + 1, (n,), generator=g)
    return x * (torch.arange(length)[None, :] < lens[:, None])[..., None].float()


def naive_maxsim(q, d, mean=False):
    """One pair at a time over its non-zero token rows (no padding, no blocks), float64."""
    qt = q[q.ne(0).any(-1)].double()
    dt = d[d.ne(0).any(-1)].double()
    s = float((qt @ dt.T).max(dim=1).values.sum())
    return s / max(len(qt), 1) if mean else s
