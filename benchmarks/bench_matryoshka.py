"""Cost of a Matryoshka loss (5 dims) relative to the plain loss: InfoNCE forward + backward on random normalised
embeddings, d = 1536, B = 4096, measured side by side (interleaved repeats, median). Target: ratio ≤ 1.5 (each extra
dim adds elementwise work on one B × B similarity matrix, not another matmul; losses/matryoshka.py).

    python benchmarks/bench_matryoshka.py [--batch 4096] [--dim 1536] [--dims 1536,768,384,192,96] [--repeats 5]
    python benchmarks/bench_matryoshka.py --quick     # B = 1024, 2 repeats: runs the code path, judges nothing
    python benchmarks/bench_matryoshka.py --chunk-elements 16777216 --threads 1   # other row chunks (this: none at B 4096)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import side_by_side  # noqa: E402

from losses import InfoNCE  # noqa: E402

TARGET = 1.5


def measure(b: int, d: int, dims: list[int], repeats: int, symmetric: bool) -> tuple[float, float]:
    plain = InfoNCE(temperature=0.02, symmetric=symmetric)
    nested = InfoNCE(temperature=0.02, symmetric=symmetric, matryoshka_dims=dims)
    return side_by_side(plain, nested, b, d, repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--dims", default="1536,768,384,192,96", help="Matryoshka dims")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk-elements", type=int, default=None,
                    help="elements of one row chunk of the similarity matrix (default: losses.matryoshka.CHUNK_ELEMENTS)")
    ap.add_argument("--quick", action="store_true", help="B=1024, 2 repeats; a smoke run that judges no target")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    dims = [int(x) for x in args.dims.split(",")]
    if args.chunk_elements:
        import losses.matryoshka

        losses.matryoshka.CHUNK_ELEMENTS = args.chunk_elements
    b = 1024 if args.quick else args.batch
    repeats = 2 if args.quick else args.repeats
    print(f"\n## Matryoshka ({len(dims)} dims {dims}) vs plain InfoNCE (fwd+bwd, B={b}, d={args.dim}, "
          f"{args.threads} threads, median of {repeats})\n")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load > cores:
        print(f"note: load average {load:.1f} on {cores} cores: other processes share the CPUs, and multi-threaded "
              "timings of many small ops (OpenMP barriers) suffer most; compare with --threads 1\n")
    print(f"| B | directions | plain (ms) | Matryoshka (ms) | ratio | target ≤ {TARGET} |")
    print("|---|---|---|---|---|---|")
    ok = True
    for symmetric in (False, True):
        a, m = measure(b, args.dim, dims, repeats, symmetric)
        ratio = m / a
        verdict = "not judged (--quick)" if args.quick else ("PASS" if ratio <= TARGET else "FAIL")
        ok &= args.quick or ratio <= TARGET
        print(f"| {b} | {'both' if symmetric else 'q→t'} | {a * 1e3:.1f} | {m * 1e3:.1f} | {ratio:.2f} | {verdict} |",
              flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
