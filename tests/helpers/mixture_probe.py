"""Two steps of the tiny Qwen2-VL on the bundled training mixture (same-source sub-batches), with the online
evaluation every step, through Lightning on 1..N processes (gloo on CPU).

    python tests/helpers/mixture_probe.py OUT ROOT --devices 2 [--chunk 4]

ROOT is a bundled V2 world built with `ensure_bundled_v2(ROOT, queries_per_dataset=3, train_rows_per_subset=8)`.
The optimizer is SGD with lr 0, so the weights stay the initial ones and every online evaluation scores the
initial model. Rank r writes OUT/rank{r}.pt: the ids of every training batch it ran, its step count, the
gradients of its first step, and the online curve; rank 0 also leaves OUT/online_eval/curve.csv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from datamodules import MixtureDataModule  # noqa: E402
from datamodules.builders.bundled_v2 import BUNDLED_V2  # noqa: E402
from datamodules.samplers import HomogeneousBatchSampler  # noqa: E402
from embedders import EmbeddingModule  # noqa: E402
from evaluation.online import OnlineEvaluation, online_eval_data  # noqa: E402
from losses import InfoNCE  # noqa: E402

ONLINE = ["ShapeCls", "ShapeT2I", "ShapeDocs"]
EVAL_CFG = {"batch_size": 1, "num_workers": 0, "progress": False, "resume": False, "sort_by_length": True}
BATCH, SUB_BATCH = 8, 4


def sources(root: Path, media: Path) -> dict:
    mix = root / "mixture"
    return {
        "ShapeCls": {"parser": "mmeb", "source": str(mix / "MMEB-train"), "subset": "ShapeCls", "split": "original",
                     "media_root": str(mix / "MMEB-train"), "weight": 1},
        "ShapeT2I": {"parser": "mmeb", "source": str(mix / "MMEB-train"), "subset": "ShapeT2I", "split": "original",
                     "media_root": str(mix / "MMEB-train"), "weight": 1},
        "colpali": {"parser": "vidore", "source": str(mix / "colpali_train_set"), "media_root": str(media),
                    "weight": 1},
        "video_qa": {"parser": "llavahound_qa", "source": str(mix / "llavahound" / "video_qa.jsonl"),
                     "media_root": str(mix / "llavahound" / "frames"), "weight": 1},
    }


def eval_data(root: Path) -> dict:
    full = {"suite": "mmeb_v2", "data_basedir": str(root / "media"), "hub_snapshots": str(root / "hub"),
            "max_rows": None, "num_frames": None, "video_labels": str(root / "bundled_v2.json"), "bundled": None,
            "datasets": {n: d.to_config() for n, d in BUNDLED_V2.items()}}
    return online_eval_data(full, ONLINE, 3)


def build_module(chunk: int | None) -> EmbeddingModule:
    torch.manual_seed(0)
    return EmbeddingModule(family="qwen2_vl", config={}, image={"min_pixels": 56 * 56, "max_pixels": 56 * 56},
                           gradcache={"chunk_size": chunk} if chunk else None,
                           optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}, scheduler=None,
                           loss=InfoNCE(temperature=0.05))


def build_data(root: Path, media: Path, module: EmbeddingModule, chunk: int | None) -> MixtureDataModule:
    def sampler(**kw):
        return HomogeneousBatchSampler(sub_batch_size=SUB_BATCH, **kw)

    data = MixtureDataModule(sources(root, media), batch_size=BATCH, sampler=sampler, seed=0, num_frames=2,
                             max_negatives_per_pair=0)
    data.set_input_builder(module.embedder.input_builder, chunk)
    return data


class Record(L.Callback):
    def __init__(self, out: Path):
        self.out, self.ids, self.grads = out, [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids.append(list(batch["ids"]))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    def on_train_end(self, trainer, pl_module):
        online = next((c for c in trainer.callbacks if isinstance(c, OnlineEvaluation)), None)
        torch.save({"ids": self.ids, "steps": trainer.global_step, "grads": self.grads,
                    "curve": online.curve if online else None},
                   self.out / f"rank{trainer.global_rank}.pt")


def run(out: Path, root: Path, devices: int, chunk: int | None, max_steps: int = 2, online: bool = True) -> None:
    out.mkdir(parents=True, exist_ok=True)
    module = build_module(chunk)
    data = build_data(root, out / "pages", module, chunk)
    callbacks = [Record(out)]
    if online:
        callbacks.insert(0, OnlineEvaluation(eval_data(root), EVAL_CFG, every_n_steps=1, out_dir=str(out / "online_eval")))
    strategy = "auto" if devices == 1 else L.pytorch.strategies.DDPStrategy(process_group_backend="gloo",
                                                                             find_unused_parameters=True)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=max_steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=callbacks, use_distributed_sampler=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("root", type=Path)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=0)
    a = ap.parse_args()
    run(a.out, a.root, a.devices, a.chunk or None)
