"""The first thing to run on a machine with a GPU: the training paths that CPU tests cannot run, on the Qwen2-VL-2B
architecture (random init from its published config, no download), through `train.py`'s own code, in one script
(`make gpu-check`, under 8 minutes on one H100), with one printed summary:

- bf16-mixed training steps: full fine-tuning and LoRA (bf16 frozen base) with `trainer=gpu`; the same with
  `trainer=fsdp` on one GPU (FSDP2 on a 1-rank mesh: wrapping, mixed precision, clipping, sharded checkpoint);
  GradCache with `trainer=gpu` and with `trainer=fsdp` — losses finite, median step time, peak memory;
- host synchronisations: `torch.cuda.set_sync_debug_mode("warn")` over 3 steps of the full fine-tuning run, every
  call site that made the host wait for the GPU listed with its count;
- the throughput table of benchmarks/bench_throughput.py (samples/s, tokens/s, peak memory, MFU, overhead).

    python benchmarks/gpu_check.py            # a GPU machine
    python benchmarks/gpu_check.py --dry-run  # anywhere: tiny model on CPU (trainer=cpu / fsdp_cpu), same code path

A failing case is reported in the summary (with its error) and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import linecache
import math
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.modules.setdefault("gpu_check", sys.modules[__name__])  # the Hydra target of the recorder callback

from bench_throughput import QWEN2VL_2B, TINY  # noqa: E402

#: (name, train.py overrides) of the training cases; trainer names are those of a GPU machine.
CASES = (
    ("gpu full FT", ["trainer=gpu"]),
    ("gpu LoRA", ["trainer=gpu", "model.lora={r:16,alpha:32}", "model.dtype=bfloat16"]),
    ("fsdp full FT", ["trainer=fsdp", "trainer.devices=1", "callbacks.model_checkpoint.every_n_train_steps=2"]),
    ("fsdp LoRA", ["trainer=fsdp", "trainer.devices=1", "model.lora={r:16,alpha:32}", "model.dtype=bfloat16"]),
    ("gpu GradCache", ["trainer=gpu", "model.gradcache.chunk_size=4"]),
    ("fsdp GradCache", ["trainer=fsdp", "trainer.devices=1", "model.gradcache.chunk_size=4"]),
)
SYNC_CASE = "gpu full FT"


class StepRecorder(L.Callback):
    """Losses, step times (device-synchronised at the edges of each step only) and peak memory; with `sync_steps`
    (first, last) `torch.cuda.set_sync_debug_mode("warn")` is on from the start of step `first` to the end of
    step `last`, and the sync warnings issued then are kept."""

    def __init__(self, sync_steps: tuple[int, int] | None = None):
        self.losses: list[float] = []
        self.times: list[float] = []
        self.sync_steps = sync_steps
        self.syncs: list[warnings.WarningMessage] = []
        self._catch = None

    def _cuda_sync(self):
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_start(self, trainer, pl_module):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        step = trainer.global_step + 1
        self._cuda_sync()
        if self.sync_steps and step == self.sync_steps[0] and torch.cuda.is_available():
            self._catch = warnings.catch_warnings(record=True)
            self.syncs = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._catch is not None and trainer.global_step == self.sync_steps[1]:
            torch.cuda.set_sync_debug_mode(0)
            self._catch.__exit__(None, None, None)
            self._catch = None
        self._cuda_sync()  # after the sync window: this synchronisation is the timer's, not the step's
        self.times.append(time.perf_counter() - self.t0)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def sync_sites(records: list[warnings.WarningMessage]) -> list[tuple[str, int, str]]:
    """(file:line, count, source line) of every call site that synchronised, most frequent first."""
    sites = Counter((r.filename, r.lineno) for r in records if "synchroniz" in str(r.message).lower())
    out = []
    for (filename, lineno), count in sites.most_common():
        short = str(Path(filename).resolve().relative_to(ROOT)) if str(filename).startswith(str(ROOT)) else filename
        out.append((f"{short}:{lineno}", count, linecache.getline(filename, lineno).strip()))
    return out


def case_overrides(overrides: list[str], dry_run: bool) -> list[str]:
    """GPU trainer names → their CPU twins in a dry run (same strategy and code, gloo, CPU autocast)."""
    if not dry_run:
        return overrides
    swap = {"trainer=gpu": "trainer=cpu", "trainer=fsdp": "trainer=fsdp_cpu"}
    return [swap.get(o, o) for o in overrides] + ["trainer.precision=bf16-mixed"]


def run_case(name: str, overrides: list[str], args, work: Path, sync: bool) -> dict:
    from operations.hydra_app import compose_config
    from training import job as train

    out = work / name.replace(" ", "_")
    steps = args.steps
    base = [f"bundled.root={work / 'bundled'}", "bundled.train_per_subset=40", "bundled.eval_per_dataset=4",
            f"trainer.max_steps={steps}", "trainer.val_check_interval=null", "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false", f"data.batch_size={args.batch}", "data.val_per_subset=0",
            "data.num_workers=2", "evaluate_before=false", "evaluate_after=false", "save_embedder=false",
            "logger=csv", "model.scheduler=null", "model.optimizer.lr=1e-5"]
    cfg = compose_config("train", [*base, *case_overrides(overrides, args.dry_run)], out)
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.model.config = TINY if args.dry_run else QWEN2VL_2B
        if not any(o.startswith("callbacks.model_checkpoint") for o in overrides):
            cfg.callbacks.model_checkpoint = None
    recorder = StepRecorder(sync_steps=(2, 4) if sync else None)
    with open_dict(cfg):
        cfg.callbacks["gpu_check"] = {"_target_": "gpu_check._recorder"}
    _RECORDERS.append(recorder)
    start = time.perf_counter()
    row = {"case": name, "overrides": case_overrides(overrides, args.dry_run)}
    try:
        train.run(cfg)
        times = recorder.times[1:] or recorder.times
        row.update(status="ok" if recorder.losses and all(map(math.isfinite, recorder.losses)) else "NON-FINITE",
                   steps=len(recorder.losses), losses=recorder.losses,
                   median_step_s=sorted(times)[len(times) // 2] if times else float("nan"),
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"))
        if sync:
            row["sync_sites"] = sync_sites(recorder.syncs)
            row["sync_warnings"] = len(recorder.syncs)
        checkpoints = sorted(p.name for p in (out / "checkpoints").glob("*")) if (out / "checkpoints").is_dir() else []
        row["checkpoints"] = checkpoints
    except Exception as err:  # reported in the summary; the other cases still run
        row.update(status="FAILED", error=f"{type(err).__name__}: {err}"[:400], traceback=traceback.format_exc()[-3000:])
    finally:
        _RECORDERS.remove(recorder)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    row["wall_s"] = time.perf_counter() - start
    return row


_RECORDERS: list[StepRecorder] = []


def _recorder() -> StepRecorder:
    """Hydra target: the recorder of the case being run."""
    return _RECORDERS[-1]


def throughput_table(args) -> tuple[str, str]:
    """bench_throughput.py's table (its printed output) and status."""
    import bench_throughput

    argv = ["--tiny", "--device", "cpu", "--steps", "2", "--batch", "4"] if args.dry_run else ["--steps", "5"]
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            code = bench_throughput.main(argv)
        text = "\n".join(line for line in buffer.getvalue().splitlines() if not line.startswith("{"))
        return text.strip(), "ok" if code == 0 else f"exit {code}"
    except Exception as err:
        return traceback.format_exc()[-2000:], f"FAILED: {type(err).__name__}: {err}"[:300]


def summary(rows: list[dict], throughput: tuple[str, str], args, wall: float) -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    lines = [f"## embedlab GPU check — {device}, torch {torch.__version__}, "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC{' (dry run: tiny model on CPU)' if args.dry_run else ''}",
             "", f"Model: Qwen2-VL-2B architecture{' (tiny dims in the dry run)' if args.dry_run else ''}, random "
             f"init; batch {args.batch} pairs, {args.steps} steps per case, bf16-mixed.", "",
             "| case | status | steps | median step s | peak GiB | losses |", "|---|---|---|---|---|---|"]
    for r in rows:
        losses = ", ".join(f"{v:.3f}" for v in r.get("losses", [])) or "–"
        lines.append(f"| {r['case']} | {r['status']} | {r.get('steps', 0)} | {r.get('median_step_s', float('nan')):.3f} "
                     f"| {r.get('peak_gib', float('nan')):.1f} | {losses} |")
    for r in rows:
        if r["status"] == "FAILED":
            lines += ["", f"{r['case']} failed: {r['error']}"]
    sync = next((r for r in rows if "sync_sites" in r), None)
    lines += ["", f"Host synchronisations over steps 2–4 of '{SYNC_CASE}' (torch.cuda.set_sync_debug_mode('warn')):"]
    if not torch.cuda.is_available():
        lines.append("  not measured: no CUDA device")
    elif sync is None:
        lines.append("  not measured: the case failed")
    elif not sync["sync_sites"]:
        lines.append("  none")
    else:
        for site, count, source in sync["sync_sites"]:
            lines.append(f"  {count:4d}×  {site}  {source}")
    lines += ["", f"Throughput (benchmarks/bench_throughput.py): {throughput[1]}", throughput[0], "",
              f"total wall time {wall:.0f} s"]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny model on CPU (trainer=cpu / fsdp_cpu): the code path")
    ap.add_argument("--steps", type=int, default=None, help="steps per case (default 5; dry run 2)")
    ap.add_argument("--batch", type=int, default=None, help="pairs per step (default 16; dry run 4)")
    ap.add_argument("--cases", default=None, help="comma-separated case names to run (default: all)")
    ap.add_argument("--no-throughput", action="store_true", help="skip the bench_throughput.py table")
    ap.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = ap.parse_args(argv)
    args.steps = args.steps or (2 if args.dry_run else 5)
    args.batch = args.batch or (4 if args.dry_run else 16)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: run `python benchmarks/gpu_check.py --dry-run` for the CPU smoke run")
        return 2
    start = time.perf_counter()
    wanted = set(args.cases.split(",")) if args.cases else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as work:
        for name, overrides in CASES:
            if wanted is None or name in wanted:
                rows.append(run_case(name, overrides, args, Path(work), sync=name == SYNC_CASE))
    throughput = ("(skipped)", "skipped") if args.no_throughput else throughput_table(args)
    text = summary(rows, throughput, args, time.perf_counter() - start)
    print(text, flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "throughput": throughput, "summary": text}, default=str))
    return 0 if all(r["status"] == "ok" for r in rows) and throughput[1] in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
