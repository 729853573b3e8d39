"""One training step of the tiny Qwen2-VL through Lightning, on one process or under DDP with gloo.

Run as a script (Lightning's DDP launcher re-executes it for every rank):
    python tests/helpers/ddp_step.py OUT_DIR --devices 2 --sizes 5,3 --negatives 1,2 [--chunk 2] [--dropout 0.1]
        [--matryoshka 16,64] [--loss infonce|distill|guided] [--multi-vector 16]
Rank r trains on its own slice of one fixed synthetic batch; after the backward (and the gradient
all-reduce) every rank writes its loss and parameter gradients to OUT_DIR/rank{r}.pt. The tests
compare them with a plain single-process computation on the concatenated batch (`reference_step`).
`--loss distill`: distillation + symmetric InfoNCE with the in-batch false-negative options, teacher scores per row
(candidates on the row's own rank and on the other rank); `--loss guided`: InfoNCE filtered by a frozen guide model.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import lightning as L
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from embedders import EmbeddingModule  # noqa: E402
from embedders.multi_vector import cat_padded  # noqa: E402
from losses import Distillation, InfoNCE  # noqa: E402

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray", "pink", "cyan", "brown"]
WORDS = ["red", "green", "blue", "yellow", "purple", "orange", "circle", "square", "triangle", "left", "right", "middle"]


TINY_IMAGE = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}


def build_loss(kind: str, matryoshka: list[int] | None):
    if kind == "distill":
        return Distillation(temperature=0.05, teacher_temperature=0.1, contrastive_weight=0.5, symmetric=True,
                            false_negative_margin=0.3, query_query=True, document_document=True)
    if kind == "guided":
        return InfoNCE(temperature=0.05, symmetric=True, guide_margin=0.0, query_query=True, matryoshka_dims=matryoshka)
    return InfoNCE(temperature=0.05, symmetric=True, matryoshka_dims=matryoshka)


def build_module(chunk: int | None, dropout: float, seed: int = 0, matryoshka: list[int] | None = None,
                 loss: str = "infonce", multi_vector: int = 0) -> EmbeddingModule:
    """`multi_vector`: the token dimension of a multi-vector head (0: single-vector, last-token pooling)."""
    torch.manual_seed(seed)
    head = {"pooling": "multi_vector", "multi_vector": {"dim": multi_vector}} if multi_vector else {}
    guide = {"family": "qwen2_vl", "config": {"text": {"hidden_size": 64}}, "image": TINY_IMAGE} \
        if loss == "guided" else None
    return EmbeddingModule(
        **head,
        family="qwen2_vl",
        config={"text": {"attention_dropout": dropout}},
        image=TINY_IMAGE,
        gradcache={"chunk_size": chunk} if chunk else None,
        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0},
        scheduler=None,
        loss=build_loss(loss, matryoshka),
        guide=guide,
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


def target_key(text: str, img) -> int:
    from datamodules.schema import Item

    return Item(text, "img" if img is not None else None).key if text.startswith("<|image_1|>") else Item(text).key


def teacher_rows(sizes: list[int], negatives: list[int], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher keys and scores of `rank`'s rows: each row's positive, the positive of a row three further on (often
    on the other rank), rank 0's first negative, and a candidate in no batch; scores a fixed function of the row."""
    positives = [target_key(*row) for r in range(len(sizes)) for row in rank_rows(sizes, negatives, r)[1][: sizes[r]]]
    first_negative = target_key(*rank_rows(sizes, negatives, 0)[1][sizes[0]]) if negatives[0] else 424242
    n, start = sum(sizes), sum(sizes[:rank])
    keys, scores = [], []
    for i in range(start, start + sizes[rank]):
        row = list(dict.fromkeys([positives[i], positives[(i + 3) % n], first_negative, 777]))
        keys.append(row + [-1] * (4 - len(row)))
        scores.append([math.sin(7 * i + k) for k in range(4)])
    return torch.tensor(keys), torch.tensor(scores, dtype=torch.float64)


def make_batch(module: EmbeddingModule, q, t, num_pairs: int, chunk: int | None, teacher=None):
    from datamodules.collate import chunk_bounds

    def encode(rows, side, build=module.embedder.input_builder, size=chunk):
        return [build([r[0] for r in rows[s:e]], [r[1] for r in rows[s:e]], side) for s, e in chunk_bounds(len(rows), size)]

    keys = torch.tensor([target_key(text, img) for text, img in t])
    batch = {"query": encode(q, "query"), "target": encode(t, "target"), "target_keys": keys,
             "num_pairs": num_pairs, "ids": [f"r{i}" for i in range(num_pairs)]}
    if teacher is not None:
        batch["teacher_keys"], batch["teacher_scores"] = teacher
    if module.guide_input_builder is not None:
        batch["guide_query"] = encode(q, "query", module.guide_input_builder, None)
        batch["guide_target"] = encode(t, "target", module.guide_input_builder, None)
    return batch


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
    ap.add_argument("--loss", default="infonce", choices=["infonce", "distill", "guided"])
    ap.add_argument("--multi-vector", type=int, default=0, help="token dimension of a multi-vector head (0: off)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    negatives = [int(x) for x in args.negatives.split(",")]
    chunk = args.chunk or None
    matryoshka = [int(x) for x in args.matryoshka.split(",")] if args.matryoshka else None
    module = build_module(chunk, args.dropout, matryoshka=matryoshka, loss=args.loss, multi_vector=args.multi_vector)
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
            teacher = teacher_rows(sizes, negatives, rank) if args.loss == "distill" else None
            batch = make_batch(module, q, t, sizes[rank], chunk, teacher)
            return torch.utils.data.DataLoader([batch], batch_size=None)

    args.out.mkdir(parents=True, exist_ok=True)
    strategy = "auto" if args.devices == 1 else L.pytorch.strategies.DDPStrategy(
        process_group_backend="gloo", find_unused_parameters=True)
    trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy, max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[StepProbe(args.out)], use_distributed_sampler=False, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=OneBatch())


def reference_step(sizes, negatives, chunk=None, dropout=0.0, rng_states=None, matryoshka=None, loss="infonce",
                   multi_vector=0):
    """Single process, no Lightning, no GradCache: the loss on the concatenated batch of all ranks and its
    parameter gradients. With `rng_states` (one per rank, as recorded at the start of the step) each
    rank's rows are embedded from that rank's RNG state, chunk by chunk in the order GradCache's first
    pass uses, so dropout draws the same masks; the embeddings then carry gradients directly."""
    module = build_module(chunk, dropout, matryoshka=matryoshka, loss=loss, multi_vector=multi_vector)
    module.train()
    qs, pos, negs, pos_keys, neg_keys = [], [], [], [], []
    side: dict[str, list] = {}
    for r in range(len(sizes)):
        q, t = rank_rows(sizes, negatives, r)
        batch = make_batch(module, q, t, sizes[r], chunk, teacher_rows(sizes, negatives, r) if loss == "distill" else None)
        for name, value in module.loss_side_inputs(batch).items():
            if name == "guide_target":  # [positives, negatives] of this rank, regrouped below like the targets
                value = (value[: sizes[r]], value[sizes[r]:])
            side.setdefault(name, []).append(value)
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
    joined = {name: torch.cat([v[0] for v in values] + [v[1] for v in values]) if name == "guide_target"
              else torch.cat(values) for name, values in side.items()}
    loss = module.loss(cat_padded(qs), cat_padded(pos + [n for n in negs if n.shape[0]]), keys, **joined)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
