"""Side-by-side timing of two losses, shared by the loss benchmarks (bench_losses.py, bench_matryoshka.py):
forward + backward on the same random unit-norm embeddings, interleaved repeats (machine noise hits both
alike), medians."""

from __future__ import annotations

import statistics
import time

import torch


def unit_embeddings(b: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A query and a target batch of `b` random unit vectors of dimension `d` (seeded)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    return q, t


def time_once(loss_fn, q: torch.Tensor, t: torch.Tensor) -> float:
    """Seconds of one forward + backward of `loss_fn(q, t)` on fresh leaf copies of the embeddings."""
    q = q.detach().requires_grad_()
    t = t.detach().requires_grad_()
    start = time.perf_counter()
    loss_fn(q, t).backward()
    return time.perf_counter() - start


def side_by_side(baseline, candidate, b: int, d: int, repeats: int) -> tuple[float, float]:
    """Median seconds of `baseline` and of `candidate` (forward + backward, B = b, d = d): one warm-up each,
    then `repeats` interleaved pairs."""
    q, t = unit_embeddings(b, d, seed=b)
    time_once(baseline, q, t), time_once(candidate, q, t)  # warm-up
    base, cand = [], []
    for _ in range(repeats):
        base.append(time_once(baseline, q, t))
        cand.append(time_once(candidate, q, t))
    return statistics.median(base), statistics.median(cand)
