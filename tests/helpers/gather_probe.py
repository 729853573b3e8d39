"""Probe for `evaluation.mmeb.gather_strided` on real gloo process groups.

    python tests/helpers/gather_probe.py OUT_DIR --world 2 --totals 7,1 --dim 3

Spawns `--world` processes; for each total, rank r holds rows r, r + world, … of a [total, dim] matrix
whose row i is filled with the value i (an empty tensor when it holds none), gathers them back with
`gather_strided`, and writes what it got to OUT_DIR/rank{r}_total{total}.pt. The test compares with the matrix
built directly in one process.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def worker(rank: int, world: int, totals: list[int], dim: int, out: str, init_file: str) -> None:
    from evaluation.encoding import gather_strided

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for total in totals:
            rows = list(range(rank, total, world))
            local = torch.tensor(rows, dtype=torch.float32).unsqueeze(1).repeat(1, dim) if rows else torch.empty(0)
            gathered = gather_strided(local, total, torch.device("cpu"))
            torch.save(gathered, Path(out) / f"rank{rank}_total{total}.pt")
        dist.barrier()  # both ranks past every collective before either tears gloo down
    finally:
        dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--totals", required=True, help="comma-separated row counts")
    ap.add_argument("--dim", type=int, default=3)
    args = ap.parse_args()
    init_file = str(Path(args.out).absolute() / "pg_init")
    mp.spawn(worker, args=(args.world, [int(t) for t in args.totals.split(",")], args.dim, args.out, init_file), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
