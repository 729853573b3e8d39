"""Benchmark of SaHa mining (mining/saha.py): time and peak memory at 10K, 100K and 1M queries.

Each size runs in a fresh subprocess so that its peak resident memory (``ru_maxrss``) is its own. A size
C means C candidates and C queries (d = 256, random unit vectors, seeded) with a random permutation as the
positives, mined with k=15, pool_mult=3 (the paper's setting); exact flat search up to 100K, the IVF index
at 1M. Where the full N×C score matrix fits in 4 GB, the retrieval is also compared with a plain torch
``(q @ c.T).topk(P)``. Threads are pinned to 2 so the numbers are comparable across machines.

    python benchmarks/bench_saha.py [--sizes 10000,100000,1000000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
DIM = 256
K = 15
POOL_MULT = 3
SEED = 0
FULL_MATRIX_LIMIT_BYTES = 4 * 2**30
IVF_FROM_SIZE = 1_000_000
TARGET_SIZE = 100_000
TARGET_SECONDS = 120.0
TARGET_PEAK_GB = 2.0
REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated corpus sizes")
    parser.add_argument("--quick", action="store_true", help="only the 10K size (smoke test)")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(run_one_size(args.worker)))
        return

    sizes = [10_000] if args.quick else [int(size) for size in args.sizes.split(",") if size.strip()]
    results = [run_in_subprocess(size) for size in sizes]
    print_report(results)


def run_in_subprocess(size: int) -> dict:
    # BLAS and OpenMP read their thread counts at import time, so set them before the child starts.
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS)}
    env["MKL_NUM_THREADS"] = str(THREADS)
    print(f"running size {size:,} ...", file=sys.stderr, flush=True)
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", str(size)],
        env=env,
        capture_output=True,
        text=True,
    )
    if completed.returncode != 0:
        raise SystemExit(f"size {size} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run_one_size(size: int) -> dict:
    import resource

    import faiss
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from mining.saha import _TopCandidateRetriever, mine_saha_clusters, saha_cluster_stats

    faiss.omp_set_num_threads(THREADS)
    torch.set_num_threads(THREADS)

    def peak_rss_gb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB

    rng = np.random.default_rng(SEED)
    queries = unit_rows(rng, size, DIM)
    cands = unit_rows(rng, size, DIM)
    positives = rng.permutation(size).astype(np.int64)
    inputs_gb = peak_rss_gb()

    index = "ivf" if size >= IVF_FROM_SIZE else "flat"
    start = time.perf_counter()
    clusters, report = mine_saha_clusters(queries, cands, positives, K, POOL_MULT, False, index=index)
    seconds = time.perf_counter() - start
    peak_gb = peak_rss_gb()
    stats = saha_cluster_stats(clusters, size)

    result = {
        "size": size,
        "index": report.index_kind,
        "seconds": seconds,
        "index_build_seconds": report.index_build_seconds,
        "retrieval_seconds": report.retrieval_seconds,
        "queries_searched": report.queries_searched,
        "peak_rss_gb": peak_gb,
        "inputs_rss_gb": inputs_gb,
        "clusters": stats["num_clusters"],
        "phase1_clusters": report.phase1_clusters,
        "mean_cluster_size": stats["mean_cluster_size"],
        "leftovers": stats["leftover_queries"],
        "full_matrix_gb": size * size * 4 / 2**30,
    }
    if size * size * 4 < FULL_MATRIX_LIMIT_BYTES:
        # Like for like: both retrieve the top P for every query (mining itself searches far fewer).
        pool = report.pool_size
        retriever = _TopCandidateRetriever(cands, pool, "flat", nprobe=1)
        start = time.perf_counter()
        for lo in range(0, size, 4096):
            retriever.top_candidates(queries[lo : lo + 4096])
        ours = time.perf_counter() - start
        query_t, cand_t = torch.from_numpy(queries), torch.from_numpy(cands)
        start = time.perf_counter()
        (query_t @ cand_t.T).topk(pool, dim=1)
        torch_seconds = time.perf_counter() - start
        result.update(ours_all_queries_seconds=ours, torch_topk_seconds=torch_seconds)
    return result


def unit_rows(rng, rows: int, dim: int):
    import numpy as np

    matrix = rng.standard_normal((rows, dim), dtype=np.float32)
    for lo in range(0, rows, 65536):
        block = matrix[lo : lo + 65536]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return matrix


def print_report(results: list[dict]) -> None:
    print(f"\nSaHa mining, k={K}, pool_mult={POOL_MULT}, d={DIM}, N = C, {THREADS} threads\n")
    print(
        "| size | index | time (s) | peak RSS (GB) | inputs RSS (GB) | queries searched | clusters "
        "| leftovers | retrieval vs torch top-k |"
    )
    print("|---:|:---|---:|---:|---:|---:|---:|---:|:---|")
    for r in results:
        if "torch_topk_seconds" in r:
            ratio = (
                f"{r['ours_all_queries_seconds'] / r['torch_topk_seconds']:.2f}x "
                f"({r['ours_all_queries_seconds']:.1f}s vs {r['torch_topk_seconds']:.1f}s, all queries)"
            )
        else:
            ratio = f"n/a: N×C matrix would need {r['full_matrix_gb']:.0f} GB"
        print(
            f"| {r['size']:,} | {r['index']} | {r['seconds']:.1f} | {r['peak_rss_gb']:.2f} "
            f"| {r['inputs_rss_gb']:.2f} | {r['queries_searched']:,} | {r['clusters']:,} | {r['leftovers']:,} "
            f"| {ratio} |"
        )
    print()
    for r in results:
        print(
            f"size {r['size']:,}: index build {r['index_build_seconds']:.1f}s, retrieval "
            f"{r['retrieval_seconds']:.1f}s, phase-1 clusters {r['phase1_clusters']:,}, "
            f"mean cluster size {r['mean_cluster_size']:.2f}"
        )
    target = next((r for r in results if r["size"] == TARGET_SIZE), None)
    if target is None:
        print(f"\ntargets: not checked (run size {TARGET_SIZE:,} for them)")
        return 0
    print()
    time_ok = target["seconds"] < TARGET_SECONDS
    memory_ok = target["peak_rss_gb"] < TARGET_PEAK_GB
    print(
        f"{'PASS' if time_ok else 'FAIL'}: {TARGET_SIZE:,} x {TARGET_SIZE:,} exact in "
        f"{target['seconds']:.1f}s (target < {TARGET_SECONDS:.0f}s)"
    )
    print(
        f"{'PASS' if memory_ok else 'FAIL'}: {TARGET_SIZE:,} x {TARGET_SIZE:,} peak RSS "
        f"{target['peak_rss_gb']:.2f} GB (target < {TARGET_PEAK_GB:.0f} GB)"
    )
    return 0 if time_ok and memory_ok else 1


if __name__ == "__main__":
    sys.exit(main())
