"""Cost of HardnessWeightedInfoNCE relative to InfoNCE: forward + backward on random normalised
embeddings, B = 1024 and 4096, d = 1536, measured side by side (interleaved repeats, median).
Target: ratio ≤ 1.15.

    python benchmarks/bench_losses.py [--sizes 1024,4096] [--dim 1536] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import side_by_side  # noqa: E402

from losses import HardnessWeightedInfoNCE, InfoNCE  # noqa: E402

TARGET = 1.15


def measure(b: int, d: int, repeats: int, symmetric: bool) -> tuple[float, float]:
    plain = InfoNCE(temperature=0.02, symmetric=symmetric)
    weighted = HardnessWeightedInfoNCE(temperature=0.02, alpha=9.0, symmetric=symmetric)
    return side_by_side(plain, weighted, b, d, repeats)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1024,4096")
    ap.add_argument("--dim", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="B=1024 only, 3 repeats")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = [1024] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 3 if args.quick else args.repeats
    print(f"\n## Loss cost: HardnessWeightedInfoNCE vs InfoNCE (fwd+bwd, d={args.dim}, {args.threads} threads, "
          f"median of {repeats})\n")
    print("| B | directions | InfoNCE (ms) | hardness-weighted (ms) | ratio | target ≤ 1.15 |")
    print("|---|---|---|---|---|---|")
    ok = True
    for b in sizes:
        for symmetric in (False, True):
            a, w = measure(b, args.dim, repeats, symmetric)
            ratio = w / a
            ok &= ratio <= TARGET
            verdict = "not judged" if args.quick else "PASS" if ratio <= TARGET else "FAIL"
            print(f"| {b} | {'both' if symmetric else 'q→t'} | {a * 1e3:.1f} | {w * 1e3:.1f} | {ratio:.3f} | "
                  f"{verdict} |", flush=True)
    if args.quick:
        print("(--quick is a smoke test of the code path: 3 repeats of one size, the target is not judged)")
        return 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
