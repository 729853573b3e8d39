"""Paired statistics for comparing two models on the same eval rows (docs/evidence.md): the exact McNemar test,
the paired bootstrap of a difference (per dataset, and for means over datasets), and the detectable difference.

Pure functions over per-query outcomes; nothing here reads files (evaluation/outcomes.py does) or knows MMEB.
An outcome matrix is [runs, queries]: one row per trained run (seed) of a model, one column per eval query,
each value the query's metric in [0, 1] (a hit: 0 or 1; or a graded metric such as NDCG@5).

- Exact McNemar: b = queries A gets right and B wrong, c = the reverse; p = min(1, 2·P[X ≤ min(b, c)]),
  X ~ Binomial(b + c, ½), computed with exact integers (no normal approximation, no continuity correction).
- Paired bootstrap: every draw resamples query indices with replacement, the same indices for both models, and
  takes the difference of the resampled means; with several runs per model it first resamples the runs
  (jointly when the two models' runs are paired by seed), then the queries (two levels). The runs drawn are
  shared by every dataset of a draw (a run is one model, scored on every dataset), the queries are drawn per
  dataset, so a mean over datasets of the per-dataset draws is the stratified bootstrap of that mean (MMEB's
  Overall and meta-task scores are means over datasets). The 95 % interval is the 2.5 / 97.5 percentiles.
- Each dataset draws its queries from its own random stream (fixed by the seed and the dataset's name), so a
  dataset's interval does not depend on which other datasets are compared with it.
- Detectable difference at power 1 − β and two-sided level α: (z_{1−α/2} + z_{1−β}) × paired SE
  (≈ 2.8 × SE for 80 % and 0.05), the SE being the standard deviation of the bootstrap draws.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

DEFAULT_DRAWS = 10_000
DEFAULT_SEED = 0
#: Bootstrap work per chunk (draws × queries): bounds the memory of the resampled indices (~8 bytes each).
_CHUNK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class McNemar:
    """Discordant counts and the exact two-sided p-value."""

    a_only: int   # b: A right, B wrong
    b_only: int   # c: B right, A wrong
    p: float

    @property
    def discordant(self) -> int:
        return self.a_only + self.b_only


def binomial_half_cdf(k: int, n: int) -> float:
    """P[X ≤ k] for X ~ Binomial(n, ½), exactly: Σ_{i ≤ k} C(n, i) / 2^n in integers, then one rounding."""
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    total, term = 0, 1
    for i in range(k + 1):
        total += term
        term = term * (n - i) // (i + 1)   # C(n, i+1) from C(n, i): exact
    return total / (1 << n)               # int / int is correctly rounded in Python


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Exact McNemar p-value from the discordant counts: min(1, 2·P[X ≤ min(b, c)]), X ~ Bin(b + c, ½)."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be ≥ 0, got {a_only}, {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    return min(1.0, 2.0 * binomial_half_cdf(min(a_only, b_only), n))


def mcnemar(a_hits: Sequence | np.ndarray, b_hits: Sequence | np.ndarray) -> McNemar:
    """McNemar test of two models' per-query hits (0/1, the same queries in the same order)."""
    a, b = _binary(a_hits, "A"), _binary(b_hits, "B")
    if a.shape != b.shape:
        raise ValueError(f"A has {a.size} outcomes and B {b.size}: they must be the same queries")
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    return McNemar(a_only, b_only, mcnemar_exact(a_only, b_only))


def _binary(values, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: per-query hits must be one-dimensional, got shape {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name}: McNemar needs 0/1 outcomes (hits), got values such as "
                         f"{sorted(set(arr[~np.isin(arr, (0, 1))].tolist()))[:3]}")
    return arr.astype(bool)


def detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference a two-sided test at level `alpha` detects with probability `power`, given
    the paired standard error `se`: (z_{1−α/2} + z_power) · se (2.80 · se at the defaults)."""
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap draws (linear interpolation between order statistics)."""
    lo, hi = np.percentile(np.asarray(draws, dtype=float), [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _as_runs(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{what}: outcomes must be [runs, queries] with at least one of each, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what}: outcomes hold non-finite values")
    return arr


def point_difference(a, b) -> float:
    """mean(B) − mean(A), each the mean over its runs and queries (a model's score averaged over seeds)."""
    return float(_as_runs(b, "B").mean() - _as_runs(a, "A").mean())


def _run_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, 0])


def _query_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, 1, zlib.crc32(name.encode())])


def _run_weights(rng: np.random.Generator, runs: int, m: int) -> np.ndarray | None:
    """[m, runs] multiplicities of the runs in m draws (None: a single run, nothing to resample)."""
    if runs == 1:
        return None
    return rng.multinomial(runs, np.full(runs, 1.0 / runs), size=m).astype(float)


def _resampled_mean(x: np.ndarray, weights: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
    """Per draw: the mean over the drawn queries `idx` [m, N] of the run-weighted mean outcome."""
    if weights is None:
        return x[0][idx].mean(axis=1)
    per_query = weights @ x / x.shape[0]   # [m, N]: each query's mean over the drawn runs
    return np.take_along_axis(per_query, idx, axis=1).mean(axis=1)


def bootstrap_differences(pairs: Mapping[str, tuple], *, draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED,
                          paired_runs: bool = False) -> dict[str, np.ndarray]:
    """Bootstrap draws of mean(B) − mean(A) for every dataset of `pairs` ({name: (A, B)}, each [runs, queries],
    A and B over the same queries in the same order; a 1-D array is one run).

    Two levels when a model has several runs: each draw first resamples the runs of each model (with
    `paired_runs`, one resample of run positions for both, which then must have as many runs, paired by
    position: the same seed), shared by all datasets of the draw, then the queries of each dataset (the same
    query indices for A and B). Returns {name: [draws]}; a mean over datasets of these arrays is the
    stratified bootstrap of that mean."""
    if draws < 1:
        raise ValueError(f"draws must be ≥ 1, got {draws}")
    if not pairs:
        raise ValueError("nothing to compare: no datasets")
    data = {}
    for name, (a, b) in pairs.items():
        a, b = _as_runs(a, f"{name} (A)"), _as_runs(b, f"{name} (B)")
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"{name}: A has {a.shape[1]} queries and B {b.shape[1]}: a paired comparison needs the "
                             "same queries")
        data[name] = (a, b)
    runs_a = {a.shape[0] for a, _ in data.values()}
    runs_b = {b.shape[0] for _, b in data.values()}
    if len(runs_a) != 1 or len(runs_b) != 1:
        raise ValueError(f"every dataset must have the same runs of a model (runs of A per dataset: "
                         f"{ {n: a.shape[0] for n, (a, _) in data.items()} }, of B: "
                         f"{ {n: b.shape[0] for n, (_, b) in data.items()} })")
    (sa,), (sb,) = runs_a, runs_b
    if paired_runs and sa != sb:
        raise ValueError(f"paired runs need as many runs of A as of B, got {sa} and {sb}")
    largest = max(a.shape[1] for a, _ in data.values())
    chunk = max(1, min(draws, _CHUNK_ELEMENTS // largest))
    run_rng = _run_rng(seed)
    query_rngs = {name: _query_rng(seed, name) for name in data}
    out = {name: np.empty(draws) for name in data}
    for start in range(0, draws, chunk):
        m = min(chunk, draws - start)
        wa = _run_weights(run_rng, sa, m)
        wb = wa if paired_runs else _run_weights(run_rng, sb, m)
        for name in sorted(data):
            a, b = data[name]
            idx = query_rngs[name].integers(0, a.shape[1], size=(m, a.shape[1]))
            out[name][start:start + m] = _resampled_mean(b, wb, idx) - _resampled_mean(a, wa, idx)
    return out


def mean_of(draws: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Draws of the mean over `names` of the per-dataset differences (an MMEB aggregate: Overall, a meta-task)."""
    if not names:
        raise ValueError("a mean over no datasets")
    return np.mean([draws[n] for n in names], axis=0)


@dataclass(frozen=True)
class Interval:
    """A paired difference with its bootstrap interval, standard error and detectable difference (same units
    as the draws)."""

    delta: float
    low: float
    high: float
    se: float
    detectable: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def summarise(delta: float, draws: np.ndarray, level: float = 0.95, power: float = 0.8) -> Interval:
    """The point difference with the percentile interval, the bootstrap SE and the detectable difference."""
    lo, hi = percentile_interval(draws, level)
    se = float(np.std(draws, ddof=1)) if len(draws) > 1 else 0.0
    return Interval(float(delta), lo, hi, se, detectable_difference(se, 1 - level, power))
