"""Probe for the end-of-training FSDP gather (`embedders.strategies.standalone_module`'s pieces) on CPU.

    python tests/helpers/fsdp_gather.py OUT_DIR [--lora]

Lightning refuses FSDP without a GPU, but torch's FSDP itself runs on CPU with gloo. Two processes build
the same tiny Qwen2-VL EmbeddingModule (with a learnable temperature in its loss), move its weights away
from the seeded initialisation, wrap it the way `trainer=fsdp` does (the LightningModule as the root,
auto-wrap and activation checkpointing on the family's block classes, use_orig_params), change one
weight through the sharded parameters, then call `full_state_dict` + `unsharded_copy`. Rank 0 writes
the copy's state dict and the weights every rank expects to OUT_DIR/result.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def build(lora: bool):
    from embedders import EmbeddingModule
    from losses import InfoNCE

    torch.manual_seed(0)
    return EmbeddingModule(
        family="qwen2_vl",
        config={},
        image={"min_pixels": 56 * 56, "max_pixels": 56 * 56},
        lora={"r": 4, "alpha": 8} if lora else None,
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0},
        scheduler=None,
        loss=InfoNCE(temperature=0.05, learnable_temperature=True),
    )


def worker(rank: int, out: str, init_file: str, lora: bool) -> None:
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from embedders.strategies import full_state_dict, layer_classes, unsharded_copy

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        module = build(lora)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # trained weights: far from what a fresh build would hold
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        expected = {k: v.clone() for k, v in module.state_dict().items() if not k.startswith("loss.")}
        classes = layer_classes(module.embedder, module.embedder.family.decoder_layer_classes)
        root = FSDP(module, auto_wrap_policy=ModuleWrapPolicy(classes), use_orig_params=True,
                    device_id=torch.device("cpu"))
        apply_activation_checkpointing(root, check_fn=lambda m: isinstance(m, tuple(classes)))
        # A change made to the sharded parameters after wrapping must be in the gathered weights.
        name, param = next((n, p) for n, p in module.named_parameters() if p.requires_grad and "layers.1." in n)
        clean = name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")
        with FSDP.summon_full_params(root, writeback=True), torch.no_grad():
            param.add_(1.0)
        expected[clean] = expected[clean] + 1.0
        state = full_state_dict(root)
        if rank == 0:
            copy = unsharded_copy(module, state)
            wrapped = any(isinstance(m, FSDP) for m in copy.modules())
            torch.save({"copy": copy.state_dict(), "expected": expected, "changed": clean, "wrapped": wrapped,
                        "state_keys": sorted(state)}, Path(out) / "result.pt")
        else:
            torch.save({"state_keys": sorted(state)}, Path(out) / "rank1.pt")
        dist.barrier()  # both ranks past every collective before either tears gloo down
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--lora", action="store_true")
    args = ap.parse_args()
    init_file = str(Path(args.out).absolute() / "pg_init")
    mp.spawn(worker, args=(args.out, init_file, args.lora), nprocs=2, join=True)


if __name__ == "__main__":
    main()
