"""GradCache pieces (METHODS §3): RNG capture/replay and one explicit gradient all-reduce.

The LightningModule drives the algorithm; this module holds what makes it exact:
`RngState` records the CPU and CUDA generator states before a chunk's no-grad forward so the
gradient-carrying replay draws the same dropout masks; `all_reduce_gradients` averages the
gradients across ranks in a few coalesced collectives once per step, with DDP's semantics for unused
parameters: one used on some ranks gets the average (the others contribute zeros), one that no rank used
keeps `grad=None`, so AdamW's weight decay and momentum leave it alone exactly as on one process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.distributed as dist


class RngState:
    """Generator states of the CPU and of one CUDA device, restorable inside a forked RNG scope."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def replay(self):
        """Run the block with the recorded states; the global generators are untouched afterwards."""
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices, enabled=True, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], bucket_bytes: int = 64 * 2**20) -> int:
    """Average gradients over ranks in coalesced buckets; returns the number of collectives issued."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    world = dist.get_world_size()
    params = [p for p in params if p.requires_grad]
    if not params:
        return 0
    # Which parameters have a gradient on some rank: one flag each, max over ranks. Reading the flags is a host
    # sync, needed to agree on which gradients exist before reducing them.
    flags = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=params[0].device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    used = flags.bool().tolist()
    params = [p for p, u in zip(params, used) if u]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    calls = 1
    by_key: dict[tuple, list[torch.nn.Parameter]] = {}
    for p in params:
        by_key.setdefault((p.grad.dtype, p.grad.device), []).append(p)
    for group in by_key.values():
        bucket, size = [], 0
        for p in group + [None]:
            if p is not None:
                bucket.append(p)
                size += p.grad.numel() * p.grad.element_size()
            if bucket and (p is None or size >= bucket_bytes):
                flat = torch.cat([q.grad.reshape(-1) for q in bucket])
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat.div_(world)
                offset = 0
                for q in bucket:
                    n = q.grad.numel()
                    q.grad.copy_(flat[offset : offset + n].view_as(q.grad))
                    offset += n
                calls += 1
                bucket, size = [], 0
    return calls
