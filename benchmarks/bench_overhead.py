"""The framework's per-step overhead against a bare PyTorch loop: the default training configuration
(`conf/train.yaml`: tiny Qwen2-VL, InfoNCE, AdamW + warm-up schedule, gradient clipping, the default callbacks
and CSV logger) run through Lightning, and a plain loop doing the same step — embed, loss, backward, clip,
AdamW, schedule — on the same pre-collated batches (32 pairs of 84 px image / text rows), on CPU.
Interleaved blocks, median step time after warm-up. Target: framework ÷ bare ≤ 1.05.

    python benchmarks/bench_overhead.py [--steps 40] [--rounds 2] [--batch 32] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET = 1.05
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star"]


def compose(out: Path):
    from operations import hydra_app as runtime

    return runtime.compose_config("train", [
        "trainer.enable_progress_bar=false", "trainer.val_check_interval=null", "trainer.limit_val_batches=0",
        "callbacks.model_checkpoint.every_n_train_steps=100000"], out)


def make_batches(module, n: int, batch: int) -> list[dict]:
    from PIL import Image

    from datamodules.schema import Item

    build = module.embedder.input_builder
    out = []
    for s in range(n):
        rows = [(COLORS[(s + i) % 8], SHAPES[(s * 3 + i) % 4], i) for i in range(batch)]
        q_texts = ["<|image_1|>\nRepresent the given image." if i % 2 == 0 else f"a {c} {sh}" for c, sh, i in rows]
        q_imgs = [Image.new("RGB", (84, 84), c) if i % 2 == 0 else None for c, _, i in rows]
        t_texts = [f"a {c} {sh} on the {'left' if i % 3 else 'right'}" for c, sh, i in rows]
        out.append({"query": [build(q_texts, q_imgs, "query")], "target": [build(t_texts, None, "target")],
                    "target_keys": torch.tensor([Item(t).key for t in t_texts]), "num_pairs": batch,
                    "ids": [f"s{s}/{i}" for i in range(batch)]})
    return out


def build_module(cfg):
    import lightning as L
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    L.seed_everything(0, workers=True)
    return instantiate(cfg.model, loss=instantiate(cfg.loss), prompt=OmegaConf.to_container(cfg.prompt),
                       _convert_="partial")


class StepTimes:
    def __init__(self):
        self.starts: list[float] = []

    def on_train_batch_start(self, *args):
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args):
        self.starts.append(time.perf_counter())


def framework_steps(cfg, batches) -> list[float]:
    import lightning as L

    from operations.hydra_app import instantiate_group
    from training import job as train

    module = build_module(cfg)
    times = StepTimes()
    probe = type("StepProbe", (L.Callback,), {"on_train_batch_start": lambda self, *a: times.on_train_batch_start(),
                                                "on_train_end": lambda self, *a: times.on_train_end()})()
    with open_dict_max_steps(cfg, len(batches)):
        trainer = train.build_trainer(cfg, module, [*instantiate_group(cfg.callbacks), probe],
                                      instantiate_group(cfg.logger))
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return [b - a for a, b in zip(times.starts, times.starts[1:])]


class open_dict_max_steps:
    def __init__(self, cfg, steps):
        self.cfg, self.steps = cfg, steps

    def __enter__(self):
        from omegaconf import open_dict

        with open_dict(self.cfg):
            self.cfg.trainer.max_steps = self.steps

    def __exit__(self, *exc):
        return False


def bare_steps(cfg, batches) -> list[float]:
    from hydra.utils import instantiate

    module = build_module(cfg)
    module.train()
    opt = instantiate(cfg.model.optimizer)(module.param_groups())
    sched = instantiate(cfg.model.scheduler)(opt, total_steps=len(batches))
    clip = float(cfg.trainer.gradient_clip_val)
    starts = []
    for batch in batches:
        starts.append(time.perf_counter())
        q = torch.cat([module.embedder(c) for c in batch["query"]])
        t = torch.cat([module.embedder(c) for c in batch["target"]])
        loss = module.loss(q, t, batch["target_keys"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    starts.append(time.perf_counter())
    return [b - a for a, b in zip(starts, starts[1:])]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few steps, no target judged")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.rounds, args.batch, args.warmup = 6, 1, 8, 2
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(Path(tmp))
        batches = make_batches(build_module(cfg), args.steps, args.batch)
        fw, bare = [], []
        for _ in range(args.rounds):
            fw += framework_steps(cfg, batches)[args.warmup:]
            bare += bare_steps(cfg, batches)[args.warmup:]
    f, b = statistics.median(fw), statistics.median(bare)
    ratio = f / b
    print("| batch | steps timed | framework step (ms) | bare PyTorch step (ms) | framework ÷ bare |")
    print(f"| {args.batch} | {len(fw)} + {len(bare)} | {f * 1e3:.1f} | {b * 1e3:.1f} | {ratio:.3f} |")
    if args.quick:
        print("quick mode: no target judged")
        return 0
    ok = ratio <= TARGET
    print(f"{'PASS' if ok else 'FAIL'}: framework overhead {100 * (ratio - 1):+.1f} % (target ≤ {100 * (TARGET - 1):.0f} %)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
