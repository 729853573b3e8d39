"""Training throughput of the Qwen2-VL-2B architecture (random init, bf16) on one GPU: samples/s,
tokens/s, peak memory and model FLOPs utilisation (MFU) of the framework's training step, with and
without GradCache and gradient checkpointing, and the framework's step against a bare PyTorch
forward/backward of the same backbone and loss (overhead ratio). Targets: MFU ≥ 35 %, overhead ≤ 5 %.

    python benchmarks/bench_throughput.py                    # needs a CUDA GPU (H100/H200)
    python benchmarks/bench_throughput.py --tiny --device cpu --steps 3   # smoke test of the code path

FLOPs per step are counted analytically for the dense matmuls of the transformer stacks (vision tower on
its patches, language model on its tokens): 2·params_in_matmuls·tokens + attention (4·L·T²·d per layer)
for the forward pass, ×3 for forward + backward (×4 with activation checkpointing, which recomputes the
forward; the recomputation is not counted as useful work, so MFU reports model FLOPs). GradCache adds a
no-grad forward (also not counted). Peak bf16 dense throughput defaults to the H100 SXM's 989 TFLOP/s
(--peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# The Qwen2-VL-2B architecture (published config), built with random weights: no download.
QWEN2VL_2B = {
    "text": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
             "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}},
    "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14,
               "spatial_merge_size": 2, "temporal_patch_size": 2},
}
TINY = {"text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2}, "vision": {"depth": 2, "embed_dim": 64, "num_heads": 2}}


def make_batch(module, batch: int, image: int, text_words: int, chunk: int | None):
    from PIL import Image

    from datamodules.collate import chunk_bounds

    build = module.embedder.input_builder
    words = "represent the given image with the following question what color is the circle on the left".split()
    text = " ".join(words[i % len(words)] for i in range(text_words))
    imgs = [Image.new("RGB", (image, image), (i * 37 % 255, i * 91 % 255, i * 13 % 255)) for i in range(batch)]
    bounds = chunk_bounds(batch, chunk)
    return {"query": [build([f"<|image_1|>\n{text}"] * (e - s), imgs[s:e], "query") for s, e in bounds],
            "target": [build([f"{text} {i}" for i in range(s, e)], None, "target") for s, e in bounds],
            "target_keys": torch.arange(batch), "num_pairs": batch, "ids": [str(i) for i in range(batch)]}


def model_flops(module, batch_data, checkpointing: bool) -> float:
    """Analytic model FLOPs of one training step (forward + backward) for the whole batch."""
    cfg = module.embedder.backbone.config
    t, v = cfg.text_config, cfg.vision_config
    d, L_t = t.hidden_size, t.num_hidden_layers
    kv = d // t.num_attention_heads * t.num_key_value_heads
    text_params = L_t * (d * d * 2 + 2 * d * kv + 3 * d * t.intermediate_size)  # q,o + k,v + gated MLP
    e, L_v = v.embed_dim, v.depth
    vis_params = L_v * (4 * e * e + 2 * e * int(e * v.mlp_ratio)) + e * 4 * e + 4 * e * d  # blocks + merger
    fwd = 0.0
    for side in ("query", "target"):
        for c in batch_data[side]:
            n_tok = int(c["attention_mask"].sum())
            seq = c["attention_mask"].shape[1]
            fwd += 2 * text_params * n_tok + 4 * L_t * c["attention_mask"].shape[0] * seq * seq * d
            if "pixel_values" in c:
                patches = c["pixel_values"].shape[0]
                per_img = patches // c["image_grid_thw"].shape[0]
                fwd += 2 * vis_params * patches + 4 * L_v * c["image_grid_thw"].shape[0] * per_img * per_img * e
    return 3 * fwd  # backward ≈ 2× forward; recomputation (checkpointing, GradCache) is not model work


def build(args, chunk, checkpointing):
    from embedders import EmbeddingModule
    from losses import InfoNCE

    torch.manual_seed(0)
    return EmbeddingModule(
        family="qwen2_vl", config=TINY if args.tiny else QWEN2VL_2B, dtype=None,
        image={"min_pixels": args.image ** 2, "max_pixels": args.image ** 2},
        gradient_checkpointing=checkpointing, gradcache={"chunk_size": chunk} if chunk else None,
        optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5}, scheduler=None,
        loss=InfoNCE(temperature=0.02))


def framework_run(args, chunk, checkpointing) -> dict:
    import lightning as L

    module = build(args, chunk, checkpointing)
    data = make_batch(module, args.batch, args.image, args.text_words, chunk)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, *a):
            if args.device == "cuda":
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, *a):
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.t0)

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                        precision="bf16-mixed" if args.device == "cuda" else "32-true", max_steps=args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Clock()], num_sanity_val_steps=0)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([data] * args.steps, batch_size=None))
    step = sorted(times[1:] or times)[len(times[1:] or times) // 2]
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    return {"step_s": step, "peak_gib": peak, "flops": model_flops(module, data, checkpointing),
            "tokens": sum(int(c["attention_mask"].sum()) for s in ("query", "target") for c in data[s])}


def bare_run(args) -> float:
    """The same backbone and loss in a plain PyTorch loop (bf16 autocast, AdamW), no Lightning."""
    module = build(args, None, False).to(args.device)
    data = make_batch(module, args.batch, args.image, args.text_words, None)
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5)
    dev = torch.device(args.device)
    move = [{k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in c.items()}
            for c in (*data["query"], *data["target"])]
    times = []
    for _ in range(args.steps):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda"):
            q = module.embedder(move[0])
            t = module.embedder(move[1])
            loss = module.loss(q, t, data["target_keys"].to(dev))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times[1:] or times)[len(times[1:] or times) // 2]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32, help="pairs per step (queries with images + text targets)")
    ap.add_argument("--image", type=int, default=448, help="image side (448 px → 1,024 patches → 256 tokens)")
    ap.add_argument("--text-words", type=int, default=48)
    ap.add_argument("--chunk", type=int, default=8, help="GradCache chunk size for the GradCache rows")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny config (smoke test on CPU)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: this benchmark measures GPU throughput (use --tiny --device cpu for a smoke test)")
        return 2
    if args.tiny:
        args.image = min(args.image, 56)
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    rows = []
    for name, chunk, ckpt in (("plain", None, False), ("checkpointing", None, True),
                              ("GradCache", args.chunk, False), ("GradCache + checkpointing", args.chunk, True)):
        r = framework_run(args, chunk, ckpt)
        mfu = r["flops"] / r["step_s"] / (args.peak_tflops * 1e12)
        rows.append({"config": name, "samples_per_s": args.batch / r["step_s"],
                     "tokens_per_s": r["tokens"] / r["step_s"], "peak_gib": r["peak_gib"], "mfu": mfu,
                     "step_s": r["step_s"]})
    bare = bare_run(args)
    overhead = rows[0]["step_s"] / bare - 1
    print(f"\n## Training throughput, Qwen2-VL-2B architecture ({'tiny smoke' if args.tiny else 'full'}), {device}, "
          f"batch {args.batch}, {args.image}px images\n")
    print("| config | samples/s | tokens/s | peak GiB | MFU |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['samples_per_s']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_gib']:.1f} | "
              f"{100 * r['mfu']:.1f}% |")
    print(f"\nframework plain step {rows[0]['step_s']:.3f} s vs bare PyTorch {bare:.3f} s: overhead "
          f"{100 * overhead:+.1f}% (target ≤ 5%)")
    print(json.dumps({"device": device, "rows": rows, "bare_step_s": bare}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
