"""evaluation/paired.py against independent computations: the exact McNemar p-value against
scipy.stats.binomtest and hand-worked binomials; the paired bootstrap (one level, two levels, stratified means over
datasets) against naive Python loops, within Monte-Carlo error."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from evaluation import paired

scipy_stats = pytest.importorskip("scipy.stats")


# ------------------------------------------------------------------------------------------- McNemar
@pytest.mark.parametrize("b, c, expected", [
    (1, 5, 2 * 7 / 64),            # n = 6: P[X ≤ 1] = (1 + 6) / 64
    (0, 6, 2 / 64),                # P[X ≤ 0] = 1 / 64
    (3, 3, 1.0),                   # 2 · P[X ≤ 3] = 2 · 42/64 > 1 → 1
    (0, 0, 1.0),                   # no discordant pair: no evidence
    (2, 8, 2 * (1 + 10 + 45) / 1024),
    (18, 0, 2 / 2 ** 18),
])
def test_mcnemar_exact_hand_worked(b, c, expected):
    assert paired.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-15)


@pytest.mark.parametrize("b, c", [(0, 1), (1, 1), (4, 9), (9, 4), (10, 30), (37, 61), (120, 95), (500, 560),
                                  (1, 1999), (2500, 2700)])
def test_mcnemar_exact_equals_scipy_binomtest(b, c):
    expected = scipy_stats.binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue
    assert paired.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("k, n", [(0, 1), (3, 10), (50, 100), (480, 1000), (999, 2000), (5, 3000)])
def test_binomial_cdf_equals_scipy(k, n):
    assert paired.binomial_half_cdf(k, n) == pytest.approx(scipy_stats.binom.cdf(k, n, 0.5), rel=1e-9, abs=1e-300)


def test_mcnemar_counts_the_discordant_queries():
    a = [1, 1, 0, 0, 1, 0, 1, 1]
    b = [1, 0, 1, 1, 1, 1, 0, 1]
    t = paired.mcnemar(a, b)
    assert (t.a_only, t.b_only, t.discordant) == (2, 3, 5)   # A only at 1, 6; B only at 2, 3, 5
    assert t.p == pytest.approx(scipy_stats.binomtest(2, 5, 0.5).pvalue)
    with pytest.raises(ValueError, match="0/1 outcomes"):
        paired.mcnemar([0.5, 1], [1, 0])
    with pytest.raises(ValueError, match="same queries"):
        paired.mcnemar([1, 0, 1], [1, 0])


def test_detectable_difference_is_2_8_standard_errors():
    assert paired.detectable_difference(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    assert paired.detectable_difference(0.5, alpha=0.05, power=0.9) == pytest.approx(0.5 * (1.959964 + 1.281552),
                                                                                        abs=1e-5)


# ------------------------------------------------------------------------------------------- bootstrap
def _hits(rng: random.Random, n: int, p: float) -> list[int]:
    return [int(rng.random() < p) for _ in range(n)]


def _naive_one_level(a: list[float], b: list[float], draws: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    n = len(a)
    out = []
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        out.append(sum(b[i] - a[i] for i in idx) / n)
    return out


def _quantiles(values: list[float]) -> tuple[float, float]:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def test_one_level_bootstrap_matches_a_naive_loop():
    rng = random.Random(1)
    a = _hits(rng, 300, 0.6)
    b = [x if rng.random() < 0.85 else 1 - x for x in a]   # correlated, as two models on the same queries
    fast = paired.bootstrap_differences({"d": (a, b)}, draws=10_000, seed=3)["d"]
    naive = _naive_one_level(a, b, 4_000, seed=7)
    se = statistics.stdev(naive)
    # Monte-Carlo error of a 2.5 % percentile: ~2.7 σ / √draws → 0.027 σ (10,000) and 0.042 σ (4,000); 0.2 σ ≈ 4 sd.
    for got, want in zip(paired.percentile_interval(fast), _quantiles(naive)):
        assert abs(got - want) < 0.2 * se, (got, want, se)
    assert float(np.std(fast, ddof=1)) == pytest.approx(se, rel=0.06)
    # The analytic paired SE: sd of the per-query differences / √n.
    d = np.asarray(b, float) - np.asarray(a, float)
    assert se == pytest.approx(d.std(ddof=0) / math.sqrt(len(d)), rel=0.06)
    assert paired.point_difference(a, b) == pytest.approx(float(d.mean()))


def test_identical_models_have_a_zero_interval_and_fixed_seed_repeats():
    x = [1, 0, 1, 1, 0]
    draws = paired.bootstrap_differences({"d": (x, x)}, draws=500, seed=0)["d"]
    assert paired.percentile_interval(draws) == (0.0, 0.0)
    a, b = [0, 1, 1, 0, 1, 1], [1, 1, 0, 1, 1, 1]
    first = paired.bootstrap_differences({"d": (a, b), "e": (b, a)}, draws=300, seed=5)
    again = paired.bootstrap_differences({"d": (a, b)}, draws=300, seed=5)
    np.testing.assert_array_equal(first["d"], again["d"])   # a dataset's draws do not depend on the others
    other = paired.bootstrap_differences({"d": (a, b)}, draws=300, seed=6)
    assert not np.array_equal(first["d"], other["d"])


def _naive_two_level(data: dict, draws: int, seed: int, paired_runs: bool) -> list[float]:
    """Draws of the mean over datasets of mean(B) − mean(A): runs resampled once per draw (shared by the
    datasets), then the queries of each dataset (the same indices for A and B)."""
    rng = random.Random(seed)
    names = sorted(data)
    sa, sb = len(data[names[0]][0]), len(data[names[0]][1])
    out = []
    for _ in range(draws):
        runs_a = [rng.randrange(sa) for _ in range(sa)]
        runs_b = runs_a if paired_runs else [rng.randrange(sb) for _ in range(sb)]
        per_dataset = []
        for name in names:
            a, b = data[name]
            n = len(a[0])
            idx = [rng.randrange(n) for _ in range(n)]
            mean_a = sum(a[r][i] for r in runs_a for i in idx) / (sa * n)
            mean_b = sum(b[r][i] for r in runs_b for i in idx) / (sb * n)
            per_dataset.append(mean_b - mean_a)
        out.append(sum(per_dataset) / len(per_dataset))
    return out


@pytest.mark.parametrize("paired_runs", [True, False])
def test_two_level_stratified_bootstrap_matches_a_naive_loop(paired_runs):
    rng = random.Random(11)
    data = {}
    for name, n, p, shift in (("small", 60, 0.5, 0.10), ("large", 150, 0.7, 0.0)):
        base = _hits(rng, n, p)
        # three seeds per model; seed-to-seed variation flips a few queries; B a bit better on "small"
        a = [[x if rng.random() < 0.9 else 1 - x for x in base] for _ in range(3)]
        b = [[x if rng.random() < 0.9 - shift else 1 for x in base] for _ in range(3)]
        data[name] = (a, b)
    fast = paired.bootstrap_differences({k: (np.array(a), np.array(b)) for k, (a, b) in data.items()},
                                        draws=10_000, seed=2, paired_runs=paired_runs)
    overall = paired.mean_of(fast, ["small", "large"])
    naive = _naive_two_level(data, 3_000, seed=9, paired_runs=paired_runs)
    se = statistics.stdev(naive)
    for got, want in zip(paired.percentile_interval(overall), _quantiles(naive)):
        assert abs(got - want) < 0.25 * se, (got, want, se)
    assert float(np.std(overall, ddof=1)) == pytest.approx(se, rel=0.08)
    # The point estimate: the mean over datasets of (mean over runs and queries of B − of A).
    expected = statistics.mean(np.mean(b) - np.mean(a) for a, b in data.values())
    assert statistics.mean([paired.point_difference(np.array(a), np.array(b)) for a, b in data.values()]) == \
        pytest.approx(expected)


def test_seed_level_adds_the_run_to_run_variance():
    """Two models whose runs disagree a lot with each other: resampling the runs widens the interval over the
    query-only bootstrap of the run means."""
    rng = np.random.default_rng(0)
    n = 400
    truth = rng.random(n) < 0.6
    a = np.array([np.where(rng.random(n) < 0.7, truth, ~truth) for _ in range(5)], dtype=float)
    b = np.array([np.where(rng.random(n) < 0.7, truth, ~truth) for _ in range(5)], dtype=float)
    two = paired.bootstrap_differences({"d": (a, b)}, draws=4000, seed=0)["d"]
    one = paired.bootstrap_differences({"d": (a.mean(0, keepdims=True), b.mean(0, keepdims=True))}, draws=4000,
                                       seed=0)["d"]
    assert np.std(two) > 1.1 * np.std(one)


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="same queries"):
        paired.bootstrap_differences({"d": ([1, 0], [1, 0, 1])})
    with pytest.raises(ValueError, match="as many runs"):
        paired.bootstrap_differences({"d": (np.ones((2, 3)), np.ones((3, 3)))}, paired_runs=True)
    with pytest.raises(ValueError, match="same runs"):
        paired.bootstrap_differences({"d": (np.ones((2, 3)), np.ones((2, 3))), "e": (np.ones((1, 3)), np.ones((2, 3)))})
    with pytest.raises(ValueError, match="non-finite"):
        paired.bootstrap_differences({"d": ([np.nan, 1], [1, 1])})
    with pytest.raises(ValueError, match="no datasets"):
        paired.bootstrap_differences({})
