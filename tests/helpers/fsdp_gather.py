"""Probe for the end-of-training FSDP gather (`embedders.strategies.standalone_module`'s pieces) on CPU.

    python tests/helpers/fsdp_gather.py OUT_DIR [--lora]

Two gloo processes build the same tiny Qwen2-VL EmbeddingModule (with a learnable temperature in its loss), move
its weights away from the seeded initialisation, shard it the way `trainer=fsdp` does (`shard_embedding_module`:
FSDP2 units on the family's block classes), change one weight through the sharded parameters, then call
`full_state_dict` + `unsharded_copy`. Rank 0 writes the copy's state dict and the weights every rank expects to
OUT_DIR/result.pt.
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
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from embedders.strategies import full_state_dict, shard_embedding_module, unsharded_copy

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        module = build(lora)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():  # trained weights: far from what a fresh build would hold
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        expected = {k: v.clone() for k, v in module.state_dict().items() if not k.startswith("loss.")}
        shard_embedding_module(module, init_device_mesh("cpu", (2,)))
        # A change made to the sharded parameters after wrapping must be in the gathered weights.
        name, param = next((n, p) for n, p in module.named_parameters() if p.requires_grad and "layers.1." in n)
        assert isinstance(param, DTensor)
        with torch.no_grad():
            param.add_(1.0)  # every rank adds 1 to its own shard
        expected[name] = expected[name] + 1.0
        state = full_state_dict(module)
        if rank == 0:
            copy = unsharded_copy(module, state)
            wrapped = any(isinstance(m, FSDPModule) for m in copy.modules())
            torch.save({"copy": copy.state_dict(), "expected": expected, "changed": name, "wrapped": wrapped,
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
