"""One training step with lr 0, then a validation, through Lightning on 1..N processes (gloo on CPU).

    python tests/helpers/val_probe.py OUT BUNDLED_ROOT --devices 3 --val-per-subset 4 --val-batch-size 10

Uses the real MMEBDataModule (bundled data, its validation split) and the tiny Qwen2-VL; rank r writes
OUT/rank{r}.pt with the logged validation metrics and the gathered similarity samples, so tests can
compare any world size with a single-process validation of the same rows (`run(..., devices=1)` in-process).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from datamodules import MMEBDataModule  # noqa: E402
from embedders import EmbeddingModule  # noqa: E402
from losses import InfoNCE  # noqa: E402


class Save(L.Callback):
    def __init__(self, out: Path):
        self.out = out

    def on_validation_end(self, trainer, pl_module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        sims = pl_module.last_similarity or {}
        torch.save({"metrics": metrics, "positive": sims.get("positive"), "negative": sims.get("negative"),
                    "val_steps": trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed},
                   self.out / f"rank{trainer.global_rank}.pt")


def run(out: Path, bundled: Path, devices: int, val_per_subset: int, val_batch_size: int) -> None:
    torch.manual_seed(0)
    module = EmbeddingModule(family="qwen2_vl", config={}, image={"min_pixels": 56 * 56, "max_pixels": 56 * 56},
                             optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}, scheduler=None,
                             loss=InfoNCE(temperature=0.05), diagnostics_max_negatives=30)
    data = MMEBDataModule(source=str(bundled / "train"), image_root=str(bundled / "train"),
                          subsets=["ShapeCls", "ShapeVQA", "ShapeT2I", "ShapeI2T", "ShapeGrounding"],
                          val_per_subset=val_per_subset, batch_size=4, val_batch_size=val_batch_size, seed=0)
    data.set_input_builder(module.embedder.input_builder)
    out.mkdir(parents=True, exist_ok=True)
    strategy = "auto" if devices == 1 else L.pytorch.strategies.DDPStrategy(process_group_backend="gloo",
                                                                             find_unused_parameters=True)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=1, val_check_interval=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Save(out)], use_distributed_sampler=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("bundled", type=Path)
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--val-per-subset", type=int, default=4)
    ap.add_argument("--val-batch-size", type=int, default=10)
    a = ap.parse_args()
    run(a.out, a.bundled, a.devices, a.val_per_subset, a.val_batch_size)
