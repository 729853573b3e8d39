"""Run by tests/precision/test_gradcache_precision.py in each of 2 gloo processes: the GradCache gradient
all-reduce against torch's DDP (find_unused_parameters=True) on a toy module where parameter `a` is used by
both ranks, `b` by rank 0 only and `c` by no rank. Writes OUT/rank{r}.pt."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# The module file alone (it needs only torch): importing the embedders package would load transformers.
_spec = importlib.util.spec_from_file_location("gradcache", Path(__file__).resolve().parents[2] / "embedders" /
                                               "gradcache.py")
_gradcache = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gradcache)
all_reduce_gradients = _gradcache.all_reduce_gradients


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(3, 3)
        self.b = torch.nn.Linear(3, 3)
        self.c = torch.nn.Linear(3, 3)

    def forward(self, x, rank):
        y = self.a(x)
        if rank == 0:
            y = self.b(y)
        return y.square().sum()


def grads(module):
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}


def main(out: Path, rank: int, world: int, init: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    x = torch.arange(6.0).reshape(2, 3) * (rank + 1)
    # the GradCache path: local backward, then one explicit all-reduce
    toy = Toy()
    toy(x, rank).backward()
    calls = all_reduce_gradients(toy.parameters())
    ours = grads(toy)
    # weight decay and momentum must leave the parameter no rank used untouched
    before = toy.c.weight.detach().clone()
    torch.optim.AdamW(toy.parameters(), lr=0.1, weight_decay=0.5).step()
    c_moved = not torch.equal(before, toy.c.weight.detach())
    # plain DDP on the same data
    ref = Toy()
    ddp = torch.nn.parallel.DistributedDataParallel(ref, find_unused_parameters=True)
    ddp(x, rank).backward()
    torch.save({"ours": ours, "ddp": grads(ref), "calls": calls, "c_moved": c_moved}, out / f"rank{rank}.pt")
    dist.barrier()  # both ranks past every collective before either tears gloo down
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
