"""Mixed precision under FSDP (2 gloo ranks, `trainer=fsdp_cpu trainer.precision=bf16-mixed`, bf16 autocast):
RoPE's `inv_freq` buffers stay fp32, every gradient reduce-scatter runs in fp32 (even with FSDP all-gathering bf16
copies, `trainer.strategy.param_dtype=bfloat16`), and with LoRA on a bf16 base (`model.dtype=bfloat16`) the frozen
base stays bf16 beside fp32 adapters and only the adapters' gradients are reduced."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

import parity_run  # noqa: E402


def test_bf16_keeps_rope_fp32_reduces_in_fp32_and_lora_reduces_adapters_only(tmp_path, tiny_cfg):
    common = tiny_cfg(["trainer=fsdp_cpu", "trainer.precision=bf16-mixed", "trainer.max_steps=2",
                       "trainer.val_check_interval=2", "data.batch_size=3", "data.val_per_subset=1",
                       "evaluate_before=false", "evaluate_after=false", "save_embedder=false",
                       "callbacks.model_checkpoint=null", "+callbacks.precision._target_=parity_run.PrecisionProbe"])
    # bf16 all-gathers too (param_dtype): the sharded weights keep their dtypes, the reduction stays fp32
    runs = {"lora": [*common, "model.lora={r:4,alpha:8}", "model.dtype=bfloat16",
                     "trainer.strategy.param_dtype=bfloat16"]}
    runs = {name: [*o, f"+callbacks.precision.out={tmp_path / name}"] for name, o in runs.items()}
    parity_run.launch(tmp_path, 2, runs)
    for name in runs:
        for rank in range(2):
            probe = torch.load(tmp_path / name / f"precision{rank}.pt")
            assert probe["buffers"] and set(probe["buffers"].values()) == {"torch.float32"}, probe["buffers"]
            assert sorted(probe["reductions"]) == [1, 2]
            for step, calls in probe["reductions"].items():
                assert calls and {dtype for dtype, _ in calls} == {"torch.float32"}, (name, step)
            losses = torch.load(tmp_path / name / f"rank{rank}.pt")["losses"]
            assert all(math.isfinite(v) for v in losses.values())
            if name == "lora":
                frozen = {d for d, trainable in probe["params"].values() if not trainable}
                adapters = {d for n, (d, trainable) in probe["params"].items() if trainable and "lora_" in n}
                assert frozen == {"torch.bfloat16"} and adapters == {"torch.float32"}
                for calls in probe["reductions"].values():  # the adapters' gradients, nothing of the frozen base
                    assert sum(n for _, n in calls) == probe["trainable_padded"] < probe["all_padded"] / 10


def test_a_bf16_random_init_keeps_rope_in_fp32_as_from_pretrained_does():
    from embedders import Embedder

    for family in ("qwen2_vl", "llava_onevision", "qwen3_vl"):
        embedder = Embedder.build(family, config={}, dtype="bfloat16")
        rope = {n: b.dtype for n, b in embedder.named_buffers() if "inv_freq" in n}
        assert rope and set(rope.values()) == {torch.float32}, family
        assert {p.dtype for p in embedder.parameters()} == {torch.bfloat16}
