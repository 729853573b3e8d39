"""One training step of the tiny Qwen2-VL through Lightning, on one process or under DDP with gloo.

Run as a script (Lightning's DDP launcher re-executes it for every rank):
    python tests/helpers/ddp_step.py OUT_DIR --devices 2 --sizes 5,3 --negatives 1,2 [--chunk 2] [--dropout 0.1]
        [--matryoshka 16,64] [--multi-vector 16]
Rank r trains on its own slice of one fixed synthetic batch; after the backward (and the gradient
all-reduce) every rank writes its loss and parameter gradients to OUT_DIR/rank{r}.pt. The tests
compare them with a plain single-process computation on the concatenated batch (`reference_step`).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import lightning as L
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from embedders import EmbeddingModule  # noqa: E402
from embedders.multi_vector import cat_padded  # noqa: E402
from losses import InfoNCE  # noqa: E402

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink", "cyan", "brown"]
WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "left", "right", "middle"]


def build_module(chunk: int | None, dropout: float, seed: int = 0, matryoshka: list[int] | None = None,
                 multi_vector: int = 0) -> EmbeddingModule:
    """`multi_vector`: the token dimension of a multi-vector head (0: single-vector, last-token pooling)."""
    torch.manual_seed(seed)
    head = {"pooling": "multi_vector", "multi_vector": {"dim": multi_vector}} if multi_vector else {}
    return EmbeddingModule(
        **head,
        family="qwen2_vl",
        config={"text": {"attention_dropout": dropout}},
        image={"min_pixels": 56 * 56, "max_pixels": 56 * 56},
        gradcache={"chunk_size": chunk} if chunk else None,
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0},
        scheduler=None,
        loss=InfoNCE(temperature=0.05, symmetric=True, matryoshka_dims=matryoshka),
    )


def rank_rows(sizes: list[int], negatives: list[int], rank: int):
    """Deterministic (query, positive, negatives) texts/images for `rank`; ranks share some targets."""
    start = sum(sizes[:rank])
    q, t = [], []
    for i in range(start, start + sizes[rank]):
        img = Image.new("RGB", (56, 56), COLORS[i % len(COLORS)])
        q.append(("<|image_1|>\nRepresent the given image.", img) if i % 2 == 0 else (f"a {WORDS[i % 12]} circle", None))
        # rows 0 and 5 (on different ranks) share an identical target: a cross-rank false negative
        t.append((f"a {WORDS[(i % 5) * 2 % 12]} square", None) if i % 3 else ("<|image_1|>\nRepresent it.", img))
    for j in range(negatives[rank]):
        t.append((f"the {WORDS[(start + j) % 12]} triangle on the left", None))
    return q, t


def make_batch(module: EmbeddingModule, q, t, num_pairs: int, chunk: int | None):
    from datamodules.collate import chunk_bounds
    from datamodules.schema import Item

    build = module.embedder.input_builder

    def encode(rows, side):
        return [build([r[0] for r in rows[s:e]], [r[1] for r in rows[s:e]], side) for s, e in chunk_bounds(len(rows), chunk)]

    keys = torch.tensor([Item(text, "img" if img is not None else None).key if text.startswith("<|image_1|>")
                         else Item(text).key for text, img in t])
    return {"query": encode(q, "query"), "target": encode(t, "target"), "target_keys": keys,
            "num_pairs": num_pairs, "ids": [f"r{i}" for i in range(num_pairs)]}


class StepProbe(L.Callback):
    """Saves the RNG state at the start of the step, then the loss and the (all-reduced) gradients."""

    def __init__(self, out: Path):
        self.out = out
        self.rng = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.rng = torch.get_rng_state()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        torch.save({"grads": grads, "loss": pl_module._probe_loss, "rng": self.rng},
                   self.out / f"rank{trainer.global_rank}.pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--sizes", default="5,3")
    ap.add_argument("--negatives", default="1,2")
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--matryoshka", default="", help="comma-separated Matryoshka dims of the loss (default: off)")
    ap.add_argument("--multi-vector", type=int, default=0, help="token dimension of a multi-vector head (0: off)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    negatives = [int(x) for x in args.negatives.split(",")]
    chunk = args.chunk or None
    matryoshka = [int(x) for x in args.matryoshka.split(",")] if args.matryoshka else None
    module = build_module(chunk, args.dropout, matryoshka=matryoshka, multi_vector=args.multi_vector)
    loss_forward = module.loss.forward

    def recorded_loss(*a, **kw):  # GradCache steps the optimizer inside training_step: record the loss here
        value = loss_forward(*a, **kw)
        module._probe_loss = float(value.detach())
        return value

    module.loss.forward = recorded_loss

    class OneBatch(L.LightningDataModule):
        def train_dataloader(self):
            rank = self.trainer.global_rank
            q, t = rank_rows(sizes, negatives, rank)
            batch = make_batch(module, q, t, sizes[rank], chunk)
            return torch.utils.data.DataLoader([batch], batch_size=None)

    args.out.mkdir(parents=True, exist_ok=True)
    strategy = "auto" if args.devices == 1 else L.pytorch.strategies.DDPStrategy(
        process_group_backend="gloo", find_unused_parameters=True)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StepProbe(args.out)], use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=OneBatch())


def reference_step(sizes, negatives, chunk=None, dropout=0.0, rng_states=None, matryoshka=None, multi_vector=0):
    """Single process, no Lightning, no GradCache: the loss on the concatenated batch of all ranks and its
    parameter gradients. With `rng_states` (one per rank, as recorded at the start of the step) each
    rank's rows are embedded from that rank's RNG state, chunk by chunk in the order GradCache's first
    pass uses, so dropout draws the same masks; the embeddings then carry gradients directly."""
    module = build_module(chunk, dropout, matryoshka=matryoshka, multi_vector=multi_vector)
    module.train()
    qs, pos, negs, pos_keys, neg_keys = [], [], [], [], []
    for r in range(len(sizes)):
        q, t = rank_rows(sizes, negatives, r)
        batch = make_batch(module, q, t, sizes[r], chunk)
        if rng_states is not None:
            torch.set_rng_state(rng_states[r])
        embs = [module.embedder(c) for c in (*batch["query"], *batch["target"])]
        nq = len(batch["query"])
        qe, te = cat_padded(embs[:nq]), cat_padded(embs[nq:])  # token vectors: padded to the widest chunk
        qs.append(qe)
        pos.append(te[: sizes[r]])
        negs.append(te[sizes[r]:])
        pos_keys.append(batch["target_keys"][: sizes[r]])
        neg_keys.append(batch["target_keys"][sizes[r]:])
    keys = torch.cat(pos_keys + neg_keys)
    loss = module.loss(cat_padded(qs), cat_padded(pos + [n for n in negs if n.shape[0]]), keys)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
