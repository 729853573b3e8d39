"""Run by tests/precision/test_multirank_resume.py in each of 2 gloo processes: every rank puts its RNGs in a
rank-specific state, the module assembles a checkpoint (collective, as in Lightning), the generators are
scrambled, the checkpoint is loaded on every rank, and the next draws must be the rank's own continuation."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from embedders import EmbeddingModule  # noqa: E402


def draws() -> torch.Tensor:
    return torch.tensor([*torch.rand(3).tolist(), *np.random.rand(3).tolist(), random.random()], dtype=torch.float64)


def main(out: Path, rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    module = EmbeddingModule(family="qwen2_vl", config={})
    torch.manual_seed(100 + rank)
    np.random.seed(200 + rank)
    random.seed(300 + rank)
    checkpoint = {"state_dict": {}}
    module.on_save_checkpoint(checkpoint)
    expected = draws()
    if rank == 0:  # Lightning writes rank 0's dict
        torch.save(checkpoint, out / "ckpt.pt")
    dist.barrier()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    module.on_load_checkpoint(torch.load(out / "ckpt.pt", weights_only=True))
    torch.save({"expected": expected, "after_restore": draws()}, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
