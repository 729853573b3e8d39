"""Probe for `evaluation.encoding.encode_unique` on a real 2-rank gloo process group.

    python tests/evaluation/encode_probe.py OUT_DIR

Rank r writes OUT_DIR/rank{r}.json: the sorted, sharded encoding of 11 items of varied lengths (must equal
the one-process matrix, which rank 0 also computes), and what happened when one item that only rank 1
encodes embeds as NaN (every rank must raise, none may wait forever in a collective)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


class _Builder:
    def __call__(self, texts, images, side):
        rows = []
        for t in texts:
            g = torch.Generator().manual_seed(sum(map(ord, t)) * 7919 + len(t))
            rows.append(torch.full((4,), float("nan")) if "nan" in t else torch.randn(4, generator=g))
        return {"v": torch.stack(rows), "attention_mask": torch.ones(len(texts), 3, dtype=torch.long)}


class _Embedder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))
        self.input_builder = _Builder()

    @property
    def device(self):
        return torch.device("cpu")

    def forward(self, inputs):
        return torch.nn.functional.normalize(inputs["v"], dim=-1)


class _Tokenizer:
    """One token per character."""

    def __call__(self, texts, **kwargs):
        return {"input_ids": [list(range(len(t))) for t in texts]}

    def convert_tokens_to_ids(self, token):
        return 0


class _TextBuilder(_Builder):
    """A text-only model's builder: its tokenizer tells every item's tokens before encoding."""

    max_length = 1000

    def __init__(self):
        from types import SimpleNamespace

        self.processor = SimpleNamespace(tokenizer=_Tokenizer())


class _LockstepEmbedder(_Embedder):
    """FSDP's uniform trace: counts its forwards (every rank must run as many)."""

    uniform_trace = True

    def __init__(self):
        super().__init__()
        self.input_builder = _TextBuilder()
        self.forwards = 0

    def forward(self, inputs):
        self.forwards += 1
        return super().forward(inputs)


def _items(texts):
    from datamodules.images import ImageLoader
    from datamodules.schema import Item

    return [(Item(t), "Probe", i, "qry_text", ImageLoader(None)) for i, t in enumerate(texts)]


def _run(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from evaluation.encoding import encode_unique

    texts = ["x" * n + str(n) for n in (5, 1, 9, 3, 12, 7, 2, 30, 4, 8, 6)]
    report = {}
    sharded = encode_unique(_Embedder(), _items(texts), "query", 2, distributed=True, sort=True)
    report["equal_to_one_process"] = bool(torch.equal(sharded, encode_unique(_Embedder(), _items(texts), "query", 2)))
    # Sorted longest first, strided over 2 ranks: the item of sorted position 1 (the second longest) is rank 1's.
    longest = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    poisoned = list(texts)
    poisoned[longest[1]] = "nan" * 8
    try:
        encode_unique(_Embedder(), _items(poisoned), "query", 2, distributed=True, sort=True)
        report["raised"] = None
    except Exception as err:
        report["raised"] = f"{type(err).__name__}: {err}"
    # Token-budget batches under the uniform trace: the ranks' shards cut into different numbers of batches, and
    # every rank must still run as many forwards as the rank with the most.
    lockstep = _LockstepEmbedder()
    budgeted = encode_unique(lockstep, _items(texts), "query", 4, distributed=True, sort=True, max_tokens=18)
    report["budget_equal_to_one_process"] = bool(torch.equal(budgeted, encode_unique(_Embedder(), _items(texts), "query", 2)))
    report["budget_forwards"] = lockstep.forwards
    # More ranks than items: one item over 2 ranks leaves rank 1 an empty shard; it still runs rank 0's one forward
    # (a filler whose output is dropped) and gets the one row back.
    lonely = _LockstepEmbedder()
    single = encode_unique(lonely, _items(["x" * 25]), "query", 4, distributed=True, sort=True, max_tokens=18)
    report["empty_shard_equal_to_one_process"] = bool(
        torch.equal(single, encode_unique(_Embedder(), _items(["x" * 25]), "query", 2)))
    report["empty_shard_forwards"] = lonely.forwards
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    mp.spawn(_run, args=(2, sys.argv[1], free_port), nprocs=2, join=True)
