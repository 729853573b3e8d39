"""Benchmark of evaluation encoding (evaluation/encoding.py): items/s and padding share with the unique items
encoded in first-seen order vs in length-sorted batches, side by side in one process.

The tiny Qwen2-VL of `conf/model/tiny_qwen2vl.yaml` (random init, seeded, the real processor) scores the
bundled eval (9 datasets, 200 rows each, generated into a temporary directory) through
`evaluate_embedder`. Each order runs `--repeats` times, alternating, after one warm-up pass; the best pass
counts. Items/s = unique items encoded ÷ encoding wall time (length keys, image decoding, processor and
forward); CPU items/s uses this process's CPU time instead (steadier on a shared machine; exact with 0
workers). Padding share = padded positions ÷ all positions the language model processed. Targets:
sorted ÷ first-seen items/s ≥ 1.3 and sorted padding ≤ 10 %. Both orders must give the same scores.
`--lm-layers 4 --lm-width 512` gives the language model a realistic share of the cost (the tiny model's 2 × 128
spends most of its time in the image processor and the vision tower, where sorting saves nothing).

The bundled images are all 84×84 and the tiny config gives every image 9 tokens. `--varied-images`
re-saves every eval image at a random size (56–448 px a side, seeded) and gives the model the image budget
of `conf/model/qwen2vl_2b.yaml` (56²…448² pixels, 4–256 image tokens), as real MMEB images of varied sizes
do under a real Qwen2-VL budget.

    python benchmarks/bench_eval.py [--rows 200] [--batch 64] [--workers 0] [--repeats 3] [--varied-images] [--quick]
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


def build(rows: int, root: Path, varied_images: bool = False, lm_layers: int | None = None,
          lm_width: int | None = None):
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    sys.path.insert(0, str(REPO_ROOT))
    import operations.hydra_app  # noqa: F401  (Hydra resolvers)
    from datamodules.builders.bundled import ensure_bundled
    from evaluation.runner import build_suite

    ensure_bundled(root, train_per_subset=8, eval_per_dataset=rows, seed=0)
    model_cfg = OmegaConf.load(REPO_ROOT / "conf/model/tiny_qwen2vl.yaml")
    if varied_images:
        import random

        from PIL import Image

        g = random.Random(0)
        for path in sorted((root / "eval" / "images").rglob("*.png")):
            with Image.open(path) as im:
                im.convert("RGB").resize((g.randint(56, 448), g.randint(56, 448))).save(path)
        model_cfg.image = OmegaConf.load(REPO_ROOT / "conf/model/qwen2vl_2b.yaml").image
    if lm_layers or lm_width:  # a language model that is a realistic share of the cost
        text = model_cfg.config.text
        if lm_layers:
            text.num_hidden_layers = lm_layers
        if lm_width:
            text.hidden_size, text.intermediate_size = lm_width, 4 * lm_width
            text.num_attention_heads, text.num_key_value_heads = max(4, lm_width // 64), max(2, lm_width // 128)
    torch.manual_seed(0)
    model = instantiate(model_cfg, loss=None, prompt=None, _convert_="partial")
    eval_data = OmegaConf.load(REPO_ROOT / "conf/eval_data/bundled.yaml")
    eval_data.source = eval_data.image_root = str(root / "eval")
    eval_data.bundled = None
    return model.embedder, build_suite(eval_data)


def run(embedder, suite, sort: bool, batch: int, workers: int) -> dict:
    from evaluation.encoding import padding_share
    from evaluation.mmeb import evaluate_embedder

    stats: dict = {}
    start, cpu = time.perf_counter(), time.process_time()
    results = evaluate_embedder(embedder, suite, batch_size=batch, num_workers=workers, progress=False,
                                sort=sort, stats=stats)
    cpu = time.process_time() - cpu
    return {"items_per_s": stats["items"] / stats["seconds"], "padding": padding_share(stats),
            "cpu_items_per_s": stats["items"] / cpu,
            "items": stats["items"], "encode_s": stats["seconds"], "total_s": time.perf_counter() - start,
            "overall": results["overall"], "datasets": {n: d["precision@1"] for n, d in results["datasets"].items()}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200, help="rows per bundled eval dataset")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (same for both orders)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--varied-images", action="store_true", help="images of varied sizes, qwen2vl_2b budget")
    parser.add_argument("--lm-layers", type=int, default=None, help="language-model layers (default: the tiny 2)")
    parser.add_argument("--lm-width", type=int, default=None, help="language-model width (default: the tiny 128)")
    parser.add_argument("--quick", action="store_true", help="smoke run (20 rows, one pass); judges nothing")
    args = parser.parse_args()
    if args.quick:
        args.rows, args.repeats = 20, 1

    import torch

    torch.set_num_threads(THREADS)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory() as tmp:
        embedder, suite = build(args.rows, Path(tmp) / "bundled", args.varied_images, args.lm_layers, args.lm_width)
        if not args.quick:
            run(embedder, suite, True, args.batch, args.workers)  # warm-up: allocator, page cache, lazy imports
        passes: dict[str, list[dict]] = {"first-seen": [], "sorted": []}
        for _ in range(args.repeats):
            for name, sort in (("first-seen", False), ("sorted", True)):
                passes[name].append(run(embedder, suite, sort, args.batch, args.workers))
    # Best pass per figure: the least disturbed by other work on the machine.
    best = {name: {**runs[0], "items_per_s": max(r["items_per_s"] for r in runs),
                   "cpu_items_per_s": max(r["cpu_items_per_s"] for r in runs),
                   "encode_s": min(r["encode_s"] for r in runs)} for name, runs in passes.items()}

    images = "images of varied sizes, qwen2vl_2b image budget" if args.varied_images else "84×84 images"
    if args.lm_layers or args.lm_width:
        images += f", language model {args.lm_layers or 2} layers × width {args.lm_width or 128}"
    print(f"\nEvaluation encoding: tiny Qwen2-VL, bundled eval ({len(suite)} datasets × {args.rows} rows, {images}, "
          f"{best['sorted']['items']} unique items), batch {args.batch}, {args.workers} worker(s), "
          f"{THREADS} threads, best of {args.repeats}")
    print("| order | items/s | CPU items/s | padding share | encode (s) |\n|---|---|---|---|---|")
    for name, r in best.items():
        print(f"| {name} | {r['items_per_s']:.1f} | {r['cpu_items_per_s']:.1f} | {100 * r['padding']:.1f} % | "
              f"{r['encode_s']:.2f} |")
    speedup = best["sorted"]["items_per_s"] / best["first-seen"]["items_per_s"]
    cpu_speedup = best["sorted"]["cpu_items_per_s"] / best["first-seen"]["cpu_items_per_s"]
    padding = best["sorted"]["padding"]
    same = all(abs(best["sorted"]["datasets"][n] - v) < 1e-9 for n, v in best["first-seen"]["datasets"].items())
    print(f"\nsorted ÷ first-seen items/s: {speedup:.2f} (target ≥ {TARGET_SPEEDUP}); by CPU time {cpu_speedup:.2f}")
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
