"""Run by tests/losses/test_gather_host.py in each of 2 gloo processes: the contrastive gather with uneven
counts, once on the default (gloo) group and once as if the default group were NCCL (then the counts go
through a separate gloo group). Writes OUT/rank{r}.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from losses import gather  # noqa: E402


def main(out: Path, rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    q = torch.full((3 + rank, 2), float(rank))
    t = torch.full((3 + rank + 2 * rank, 2), float(rank) + 0.5)
    results = [gather.gather_contrastive_batch(q, t)]
    real = dist.get_backend
    dist.get_backend = lambda *a, **k: "nccl"  # take the separate-host-group path
    try:
        results.append(gather.gather_contrastive_batch(q, t))
        side = gather._HOST_GROUP[1]
    finally:
        dist.get_backend = real
    torch.save({"results": [(g.queries, g.negatives, g.offset, g.local) for g in results],
                "side_group_size": dist.get_world_size(side)}, out / f"rank{rank}.pt")
    # Both ranks past every collective before either tears gloo down: a rank that destroys its groups while the
    # other still talks on them aborts the other ("terminate called without an active exception").
    dist.barrier(group=side)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
