"""Benchmark of evaluation encoding (evaluation/encoding.py): items/s and padding share with the unique items
encoded in first-seen order vs in length-sorted batches, side by side in one process.

The tiny Qwen2-VL of `conf/model/tiny_qwen2vl.yaml` (random init, seeded, the real processor) scores the
bundled eval (9 datasets, 200 rows each, generated into a temporary directory) through
`evaluate_embedder`. Each configuration runs `--repeats` times, alternating, after one warm-up pass; the
best pass counts. Items/s = unique items encoded ÷ encoding wall time (image decoding, processor and
forward); padding share = padded positions ÷ all positions the model processed. Targets: sorted ÷
first-seen items/s ≥ 1.3 and sorted padding ≤ 10 %. Both orders must give the same scores.

    python benchmarks/bench_eval.py [--rows 200] [--batch 64] [--workers 0] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_SPEEDUP = 1.3
TARGET_PADDING = 0.10
THREADS = 2


def build(rows: int, root: Path):
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    sys.path.insert(0, str(REPO_ROOT))
    import runtime  # noqa: F401  (Hydra resolvers)
    from datamodules.bundled import ensure_bundled
    from evaluation.runner import build_suite

    ensure_bundled(root, train_per_subset=8, eval_per_dataset=rows, seed=0)
    torch.manual_seed(0)
    model = instantiate(OmegaConf.load(REPO_ROOT / "conf/model/tiny_qwen2vl.yaml"), loss=None, prompt=None,
                        _convert_="partial")
    eval_data = OmegaConf.load(REPO_ROOT / "conf/eval_data/bundled.yaml")
    eval_data.source = eval_data.image_root = str(root / "eval")
    eval_data.bundled = None
    return model.embedder, build_suite(eval_data)


def run(embedder, suite, sort: bool, batch: int, workers: int) -> dict:
    from evaluation.encoding import padding_share
    from evaluation.mmeb import evaluate_embedder

    stats: dict = {}
    start = time.perf_counter()
    results = evaluate_embedder(embedder, suite, batch_size=batch, num_workers=workers, progress=False,
                                sort=sort, stats=stats)
    return {"items_per_s": stats["items"] / stats["seconds"], "padding": padding_share(stats),
            "items": stats["items"], "encode_s": stats["seconds"], "total_s": time.perf_counter() - start,
            "overall": results["overall"], "datasets": {n: d["precision@1"] for n, d in results["datasets"].items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200, help="rows per bundled eval dataset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (same for both orders)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run (20 rows, one pass); judges nothing")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 20, 1

    import torch

    torch.set_num_threads(THREADS)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        embedder, suite = build(args.rows, Path(tmp) / "bundled")
        if not args.quick:
            run(embedder, suite, True, args.batch, args.workers)  # warm-up: allocator, page cache, lazy imports
        best: dict[str, dict] = {}
        for _ in range(args.repeats):
            for name, sort in (("first-seen", False), ("sorted", True)):
                r = run(embedder, suite, sort, args.batch, args.workers)
                if name not in best or r["items_per_s"] > best[name]["items_per_s"]:
                    best[name] = r

    print(f"\nEvaluation encoding: tiny Qwen2-VL, bundled eval ({len(suite)} datasets × {args.rows} rows, "
          f"{best['sorted']['items']} unique items), batch {args.batch}, {args.workers} worker(s), "
          f"{THREADS} threads, best of {args.repeats}")
    print("| order | items/s | padding share | encode (s) |\n|---|---|---|---|")
    for name, r in best.items():
        print(f"| {name} | {r['items_per_s']:.1f} | {100 * r['padding']:.1f} % | {r['encode_s']:.2f} |")
    speedup = best["sorted"]["items_per_s"] / best["first-seen"]["items_per_s"]
    padding = best["sorted"]["padding"]
    same = all(abs(best["sorted"]["datasets"][n] - v) < 1e-9 for n, v in best["first-seen"]["datasets"].items())
    print(f"\nsorted ÷ first-seen items/s: {speedup:.2f} (target ≥ {TARGET_SPEEDUP})")
    print(f"sorted padding share: {100 * padding:.1f} % (target ≤ {100 * TARGET_PADDING:.0f} %)")
    print(f"same scores in both orders: {same} (Overall {best['sorted']['overall']:.2f} vs "
          f"{best['first-seen']['overall']:.2f})")
    if args.quick:
        print("quick run: targets not judged")
        return 0
    ok = speedup >= TARGET_SPEEDUP and padding <= TARGET_PADDING and same
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
