"""GradCache memory and time on the tiny Qwen2-VL with images, through the framework's own
training step (Lightning, `EmbeddingModule`), each configuration in a fresh process:

- peak memory of one step at effective batch 256 with chunks of 16 vs a plain step at batch 16
  (target ≤ 1.5×), and the plain step at batch 256 for contrast;
- step time at batch 256 with chunks vs without (target ≤ 1.5×).

Peak memory is the growth of the process's peak resident set over its size just before the
first step (model, optimizer and the pre-built batch are already resident), so it measures the
step's working memory: activations, gradients, optimizer state creation.

    python benchmarks/bench_gradcache.py [--batch 256] [--chunk 16] [--image 224] [--steps 4]

Images default to 224 px (256 patches, 64 image tokens), a realistic size. At toy sizes (112 px) a chunk
of 16 rows is so little work that fixed per-forward costs dominate on a CPU and the time ratio drifts
up towards 1.5–1.7; README records both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEM_TARGET, TIME_TARGET = 1.5, 1.5


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(batch: int, chunk: int | None, image: int, steps: int, threads: int) -> dict:
    """Runs in a fresh process: `steps` training steps, returns step times and peak memory growth."""
    sys.path.insert(0, str(ROOT))
    import lightning as L
    import torch
    from PIL import Image

    from datamodules.collate import chunk_bounds
    from embedders import EmbeddingModule
    from losses import InfoNCE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = EmbeddingModule(
        family="qwen2_vl", config={"text": {"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4,
                                            "num_key_value_heads": 2},
                                   "vision": {"depth": 2, "embed_dim": 96, "num_heads": 4}},
        image={"min_pixels": image * image, "max_pixels": image * image},
        gradcache={"chunk_size": chunk} if chunk else None,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4}, scheduler=None,
        loss=InfoNCE(temperature=0.05))
    build = module.embedder.input_builder
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    images = [Image.new("RGB", (image, image), colors[i % 8]) for i in range(batch)]
    q_texts = [f"<|image_1|>\nRepresent the given image with the following question: what is {i}?" for i in range(batch)]
    t_texts = [f"a {colors[i % 8]} shape number {i}" for i in range(batch)]
    chunks = chunk_bounds(batch, chunk)
    data = {"query": [build(q_texts[s:e], images[s:e], "query") for s, e in chunks],
            "target": [build(t_texts[s:e], None, "target") for s, e in chunks],
            "target_keys": torch.arange(batch), "num_pairs": batch, "ids": [str(i) for i in range(batch)]}
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, *a):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *a):
            times.append(time.perf_counter() - self.t0)

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Clock()],
                        num_sanity_val_steps=0)
    base = rss_bytes()
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([data] * steps, batch_size=None))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"batch": batch, "chunk": chunk, "step_s": times[1:] or times, "peak_growth": max(peak - base, 0)}


def run(batch: int, chunk: int | None, image: int, steps: int, threads: int) -> dict:
    code = (f"import json,sys; sys.path.insert(0,{str(ROOT / 'benchmarks')!r}); import bench_gradcache as b; "
            f"print('RESULT', json.dumps(b.worker({batch}, {chunk!r}, {image}, {steps}, {threads})))")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--image", type=int, default=224, help="image side in pixels (multiple of 28)")
    ap.add_argument("--steps", type=int, default=4, help="training steps per run; the first is a warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="batch 64, chunk 8, 56-px images (smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.chunk, args.image = 64, 8, 56
    gc = run(args.batch, args.chunk, args.image, args.steps, args.threads)
    small = run(args.chunk, None, args.image, args.steps, args.threads)
    big = run(args.batch, None, args.image, args.steps, args.threads)
    mb = 2**20

    def mean(xs):  # the median step: robust to a stray slow step on a shared machine
        xs = sorted(xs)
        return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])

    def verdict(met: bool) -> str:  # a --quick smoke run judges no target: toy sizes measure noise
        return "not judged" if args.quick else "PASS" if met else "FAIL"

    mem_ratio = gc["peak_growth"] / max(small["peak_growth"], 1)
    time_ratio = mean(gc["step_s"]) / mean(big["step_s"])
    print(f"\n## GradCache on the tiny Qwen2-VL ({args.image}px images, {args.threads} threads)\n")
    print("| step | batch | chunk | peak memory growth (MiB) | step time (s) |")
    print("|---|---|---|---|---|")
    for name, r in (("GradCache", gc), ("plain", small), ("plain", big)):
        print(f"| {name} | {r['batch']} | {r['chunk'] or '–'} | {r['peak_growth'] / mb:.0f} | {mean(r['step_s']):.2f} |")
    print(f"\nmemory: GradCache@{args.batch}/{args.chunk} ÷ plain@{args.chunk} = {mem_ratio:.2f} "
          f"(target ≤ {MEM_TARGET}: {verdict(mem_ratio <= MEM_TARGET)}); "
          f"plain@{args.batch} ÷ plain@{args.chunk} = {big['peak_growth'] / max(small['peak_growth'], 1):.2f}")
    print(f"time:   GradCache@{args.batch} ÷ plain@{args.batch} = {time_ratio:.2f} "
          f"(target ≤ {TIME_TARGET}: {verdict(time_ratio <= TIME_TARGET)}); "
          f"GradCache@{args.batch} ÷ ({args.batch // args.chunk} plain steps @{args.chunk}) = "
          f"{mean(gc['step_s']) / (mean(small['step_s']) * args.batch / args.chunk):.2f}", flush=True)
    if args.quick:
        print("(--quick is a smoke test of the code path: toy sizes, targets not evaluated)")
        return 0
    return 0 if mem_ratio <= MEM_TARGET and time_ratio <= TIME_TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
