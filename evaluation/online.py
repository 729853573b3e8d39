"""Evaluation during training (VLM2Vec's online evaluation subset, B3's `--eval_steps`): a small subset of the
configured eval suite — some datasets, a per-dataset row cap — scored every N optimizer steps, so a run shows
MMEB curves, not one number at the end.

`OnlineEvaluation` is a Lightning callback. Every rank calls the scoring at the same step and encodes its shard
of the unique items (`evaluation.runner.score(distributed=True)`, the sharding of `evaluate.py devices=N`), so the
scores equal a single-process evaluation of the same subset. The scores are logged with `pl_module.log` — the
loggers (CSV, W&B) get curves keyed `online/<name>`, the progress bar shows `online/overall`, and a
`ModelCheckpoint(monitor="online/overall", mode="max")` can keep the best step — and written by rank 0 to
`<out_dir>/curve.csv` and `<out_dir>/best.json` (the best step so far). The callback's state (curve, best step)
is saved in checkpoints, so a resumed run continues the same curve. Scoring runs with the RNG state forked and the
model's training mode restored: it changes nothing the training would otherwise draw.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from .runner import build_suite, result_metrics, score

log = logging.getLogger(__name__)

PREFIX = "online"


def online_eval_data(eval_data: Mapping, datasets: Sequence[str] | None, max_rows: int | None) -> dict:
    """The eval_data config of the online subset: the named datasets (all when None) with `max_rows` rows each."""
    cfg = {k: v for k, v in dict(eval_data).items() if k != "online"}
    if datasets is not None:
        known = dict(cfg["datasets"])
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise ValueError(f"eval_data.online.datasets names {unknown}, which eval_data.datasets does not have; "
                             f"choose among {sorted(known)}")
        cfg["datasets"] = {d: known[d] for d in datasets}
    if max_rows is not None:
        cfg["max_rows"] = int(max_rows)
    return cfg


class OnlineEvaluation(L.Callback):
    """Scores `eval_data` (already restricted to the online subset, `online_eval_data`) every `every_n_steps`
    optimizer steps (and before the first step when `at_start`, after the last when `at_end`), on all ranks. `metric` (a key of the logged
    metrics without the prefix, default `overall`) decides the best step (higher is better)."""

    def __init__(self, eval_data: Mapping[str, Any], eval_cfg: Mapping[str, Any], every_n_steps: int,
                 out_dir: str | None = None, metric: str = "overall", at_start: bool = True, at_end: bool = True):
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"eval_data.online.every_n_steps must be an integer ≥ 1, got {every_n_steps!r}")
        # No progress bars: one line per evaluation is the online report.
        self.eval_data, self.eval_cfg = dict(eval_data), {**dict(eval_cfg), "progress": False}
        self.every_n_steps, self.at_start, self.at_end = int(every_n_steps), bool(at_start), bool(at_end)
        self.out_dir = Path(out_dir) if out_dir else None
        self.metric = f"{PREFIX}/{metric}"
        self.curve: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None
        self._suite = None

    # ------------------------------------------------------------------ state (saved in checkpoints)
    def state_dict(self) -> dict:
        return {"curve": list(self.curve), "best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.curve, self.best = list(state.get("curve", [])), state.get("best")

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shared = trainer.world_size > 1
        if shared and not trainer.is_global_zero:
            trainer.strategy.barrier("online_eval_suite")  # rank 0 reads (on first use: generates) the data first
        self._suite = build_suite(self.eval_data, pl_module.embedder.prompt)
        if shared and trainer.is_global_zero:
            trainer.strategy.barrier("online_eval_suite")
        resumed_at = trainer.global_step
        self.curve = [p for p in self.curve if p["step"] <= resumed_at]  # a resume rewinds to its checkpoint
        log.info("online evaluation every %d steps on %d dataset(s) (%s), %s rows each", self.every_n_steps,
                 len(self._suite), ", ".join(ds.name for ds in self._suite), self.eval_data.get("max_rows") or "all")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_start and trainer.global_step == 0 and not self.curve:
            self.evaluate(trainer, pl_module, 0)  # the curve's starting point: the untrained model

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        step = trainer.global_step
        last = trainer.max_steps is not None and trainer.max_steps > 0 and step >= trainer.max_steps
        if step == 0 or (step % self.every_n_steps and not (self.at_end and last)):
            return
        if self.curve and self.curve[-1]["step"] == step:  # several batches per optimizer step (accumulation)
            return
        self.evaluate(trainer, pl_module, step)

    # ------------------------------------------------------------------ scoring
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> dict:
        embedder = pl_module.embedder.truncated(self.eval_cfg.get("dim"))
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() and pl_module.device.type == "cuda" else []
        was_training = embedder.training
        with torch.random.fork_rng(devices=devices):
            try:
                results = score(embedder, self._suite, self.eval_cfg, f"step {step}", None, (), PREFIX,
                                distributed=trainer.world_size > 1, report=False)
            finally:
                embedder.train(was_training)
        metrics = {k: float(v) for k, v in result_metrics(results, PREFIX).items()
                   if v is not None and math.isfinite(float(v))}
        point = {"step": step, **metrics}
        self.curve.append(point)
        value = metrics.get(self.metric)
        if value is not None and (self.best is None or value > self.best["value"]):
            self.best = {"step": step, "value": value}
        if step == 0:  # before training Lightning takes no self.log: the loggers get the starting point directly
            if trainer.is_global_zero:
                for lg in trainer.loggers:
                    lg.log_metrics(metrics, step=0)
        else:
            # Every rank holds the same numbers: log them everywhere (no sync needed), so the progress bar, the
            # loggers and a ModelCheckpoint monitoring them all see them at this step.
            pl_module.log_dict({k: v for k, v in metrics.items() if k != self.metric}, on_step=True, on_epoch=False,
                               batch_size=1)
            if value is not None:
                pl_module.log(self.metric, value, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        if trainer.is_global_zero:
            best = f" (best {self.best['value']:.1f} at step {self.best['step']})" if self.best else ""
            shown = f"{value:.1f}" if value is not None else "n/a"
            print(f"online eval, step {step}: {self.metric.split('/', 1)[1]} {shown}{best}", flush=True)
            self._write()
        return results

    def _write(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        columns = ["step"] + sorted({k for p in self.curve for k in p if k != "step"})
        tmp = self.out_dir / ".curve.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.curve)
        tmp.replace(self.out_dir / "curve.csv")
        best = {"metric": self.metric, **(self.best or {}), "curve": str(self.out_dir / "curve.csv")}
        (self.out_dir / "best.json").write_text(json.dumps(best, indent=1) + "\n")


def online_callbacks(eval_data: Mapping[str, Any], eval_cfg: Mapping[str, Any], output_dir: str | Path,
                     checkpoint_dir: str | Path | None = None) -> list[L.Callback]:
    """The callbacks `eval_data.online` asks for (none while `every_n_steps` is null): the evaluation, and with
    `save_best` a ModelCheckpoint keeping the checkpoint of the best step."""
    online = dict(eval_data.get("online") or {})
    unknown = sorted(set(online) - {"every_n_steps", "datasets", "max_rows", "metric", "save_best"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in eval_data.online; known: every_n_steps, datasets, max_rows, "
                         "metric, save_best")
    if online.get("every_n_steps") is None:
        return []
    metric = str(online.get("metric") or "overall")
    callbacks: list[L.Callback] = [OnlineEvaluation(
        online_eval_data(eval_data, online.get("datasets"), online.get("max_rows")), eval_cfg,
        online["every_n_steps"], out_dir=str(Path(output_dir) / "online_eval"), metric=metric)]
    if online.get("save_best"):
        callbacks.append(ModelCheckpoint(
            dirpath=str(checkpoint_dir or Path(output_dir) / "checkpoints"), filename="best-step{step:06d}",
            monitor=f"{PREFIX}/{metric}", mode="max", save_top_k=1, save_last=False, auto_insert_metric_name=False,
            every_n_train_steps=int(online["every_n_steps"])))
    return callbacks


def read_curve(path: str | Path) -> list[dict[str, float]]:
    """The rows of a `curve.csv` (for plots and tests)."""
    with Path(path).open() as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def plot_curve(curve_csv: str | Path, out_png: str | Path, title: str | None = None) -> Path:
    """A PNG of an online-evaluation curve: overall (bold) and each modality / meta-task / IND-OOD line logged."""
    import matplotlib  # optional dependency, only for the picture

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = read_curve(curve_csv)
    steps = [p["step"] for p in curve]
    overall = f"{PREFIX}/overall"
    groups = ("image", "video", "visdoc", "IND", "OOD")
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=120)
    for key in [f"{PREFIX}/{g}" for g in groups if any(f"{PREFIX}/{g}" in p for p in curve)]:
        ax.plot(steps, [p.get(key, float("nan")) for p in curve], marker=".", linewidth=1, label=key.split("/", 1)[1])
    ax.plot(steps, [p.get(overall, float("nan")) for p in curve], marker="o", linewidth=2.5, color="black",
            label="overall")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("score (hit@1 / nDCG@5, %)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
