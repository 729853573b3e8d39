"""Benchmark of negative mining without the model (mining/negatives.py + mining/selection.py): exact top-N
retrieval with faiss, the positive-aware filter and each selector, at 10K and 50K queries; and the
approximate IVF retrieval (`mining.index=ivf`, nprobe 32) side by side with the exact one: its speed-up and
its recall of the exact top-100.

A size N means N queries and N unique positives (d = 256, random unit vectors with each query near its
positive, seeded), pool 100, two negatives per query. Threads are pinned to 2 so numbers compare across
machines; the model's encoding time is not included (it dominates in practice and is measured by the
evaluation benchmarks).

    python benchmarks/bench_negatives.py [--sizes 10000,50000] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

THREADS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from mining.negatives import retrieve  # noqa: E402
from mining.selection import positive_aware_mask, select_negatives  # noqa: E402

DIM = 256
POOL = 100
NUM_NEGATIVES = 2
SEED = 0


def synthetic(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(SEED)
    cand = rng.normal(size=(size, DIM)).astype(np.float32)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    positive_of = rng.permutation(size)
    query = cand[positive_of] + 0.1 * rng.normal(size=(size, DIM)).astype(np.float32)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    return np.ascontiguousarray(query, dtype=np.float32), cand, positive_of


def run_one_size(size: int) -> dict[str, float]:
    query, cand, positive_of = synthetic(size)
    timings = {}
    start = time.perf_counter()
    ids, scores, valid = retrieve(query, cand, positive_of, POOL)
    timings["retrieve"] = time.perf_counter() - start
    start = time.perf_counter()
    ivf_ids, _, ivf_valid = retrieve(query, cand, positive_of, POOL, index="ivf", nprobe=32)
    timings["retrieve_ivf"] = time.perf_counter() - start
    hits = sum(len(np.intersect1d(ids[q][valid[q]], ivf_ids[q][ivf_valid[q]], assume_unique=True))
               for q in range(size))
    timings["ivf_recall"] = hits / max(int(valid.sum()), 1)
    positive_scores = np.einsum("nd,nd->n", query, cand[positive_of], dtype=np.float64)
    start = time.perf_counter()
    keep = positive_aware_mask(scores, positive_scores, valid=valid, relative=0.95)
    timings["filter"] = time.perf_counter() - start
    for method in ("top", "random", "simans"):
        start = time.perf_counter()
        select_negatives(scores, positive_scores, keep, NUM_NEGATIVES, method, np.random.default_rng(SEED))
        timings[method] = time.perf_counter() - start
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000", help="comma-separated query counts")
    parser.add_argument("--quick", action="store_true", help="only 10K (smoke test)")
    args = parser.parse_args()
    faiss.omp_set_num_threads(THREADS)
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"| queries | retrieve top-{POOL} exact (s) | IVF (s) | exact ÷ IVF | IVF recall of exact | filter (s) | "
          "top (s) | random (s) | simans (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        t = run_one_size(size)
        print(f"| {size:,} | {t['retrieve']:.2f} | {t['retrieve_ivf']:.2f} | {t['retrieve'] / t['retrieve_ivf']:.1f} | "
              f"{t['ivf_recall']:.3f} | {t['filter']:.3f} | {t['top']:.3f} | {t['random']:.3f} | "
              f"{t['simans']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
