"""Exact resume, atomic checkpoints, and resume as the README writes it.

A run killed with SIGKILL mid-epoch and restarted in the same run directory (ckpt_path=auto) must
produce the same subsequent losses as the uninterrupted run: model, optimizer, LR scheduler,
sampler position and RNG (dropout is on) all restored. A run stopped with SIGTERM saves a checkpoint
at the step it was on, exits non-zero with the resume command, and `python train.py resume=<run dir>`
(nothing else on the command line) continues it with its recorded config — the hardness-weighted loss
with α = 9, not the default loss — and a complete metrics history. A resume that changes the loss, or
that finds the run directory in use, is refused before any work."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROBES = os.pathsep.join(str(p) for p in (ROOT / "tests" / "helpers", ROOT / "tests" / "entrypoints"))
LOSS = ["loss=hardness_weighted", "loss.alpha=9"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{PROBES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def python_train(args: list[str], cwd: Path = ROOT, new_session: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=600, start_new_session=new_session)


def train(run_dir: Path, tiny_cfg, extra: list[str], check: bool = True):
    args = tiny_cfg([
        f"hydra.run.dir={run_dir}", *LOSS, "trainer.max_steps=12", "callbacks.model_checkpoint.every_n_train_steps=3",
        "trainer.val_check_interval=4", "eval_data.max_rows=4", "save_embedder=false",
        "+model.config.text.attention_dropout=0.2",
        "+callbacks.recorder._target_=resume_probe.LossRecorder", f"+callbacks.recorder.path={run_dir}/losses.txt",
        *extra])
    proc = python_train(args)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "losses.txt").read_text().splitlines():
        step, value = line.split()
        out[int(step)] = float(value)
    return out


def logged_losses(run_dir: Path) -> list[tuple[int, float]]:
    """(step, train/loss) of every row of the run's metrics.csv that logged a training loss."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(f) if r.get("train/loss")]


def _conftest(request):
    """tests/conftest.py as pytest loaded it (with --import-mode=importlib it is not importable by name)."""
    return next(p for p in request.config.pluginmanager.get_plugins()
                if str(getattr(p, "__file__", "")).endswith(os.path.join("tests", "conftest.py")))


@pytest.fixture(scope="module")
def straight(request, tmp_path_factory, bundled_root):
    """The uninterrupted run both kill tests compare against."""
    tiny_overrides = _conftest(request).tiny_overrides
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    train(run_dir, lambda extra=None: tiny_overrides(bundled_root, extra), [])
    return run_dir


def test_killed_run_resumes_exactly(tmp_path, tiny_cfg, straight):
    killed = tmp_path / "killed"
    # SIGKILL at step 7, once: the resume continues the run's recorded config, kill callback included
    proc = train(killed, tiny_cfg, ["+callbacks.kill._target_=fault_probes.SignalAt", "+callbacks.kill.step=7",
                                    "+callbacks.kill.signal=SIGKILL", f"+callbacks.kill.marker={tmp_path}/killed_once"],
                 check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed, mid-epoch (an epoch is 35 steps)
    assert sorted(losses(killed)) == list(range(1, 8))
    # the same command in the same run directory: ckpt_path=auto picks up checkpoints/last.ckpt (step 6)
    train(killed, tiny_cfg, ["+callbacks.kill._target_=fault_probes.SignalAt", "+callbacks.kill.step=7",
                             "+callbacks.kill.signal=SIGKILL", f"+callbacks.kill.marker={tmp_path}/killed_once"])
    a, b = losses(straight), losses(killed)
    assert sorted(a) == list(range(1, 13))
    resumed = [s for s in range(7, 13)]
    assert [b[s] for s in resumed] == pytest.approx([a[s] for s in resumed], rel=1e-6, abs=1e-7)
    # step 7 ran twice in the killed directory; its recorded values agree too
    lines = (killed / "losses.txt").read_text().splitlines()
    assert len(lines) == 7 + 6
    # metrics.csv: rows are written with every checkpoint, so the kill lost none the resumed run did not log again
    history, reference = logged_losses(killed), logged_losses(straight)
    assert [s for s, _ in history] == [s for s, _ in reference] == list(range(12))
    assert [v for _, v in history] == pytest.approx([v for _, v in reference], rel=1e-6)


@pytest.mark.slow   # 35–40 s; the fast suite keeps exact resume (test_killed_run_resumes_exactly) and the budget's chunks
def test_token_budget_chunks_with_homogeneous_batches_resume_exactly(tmp_path, tiny_cfg):
    """`data.max_tokens_per_batch` cuts each batch's GradCache chunks from length-grouped rows within the budget; the
    sampler's batches (here task-homogeneous) are untouched, so a run killed mid-epoch resumes to the uninterrupted
    run's losses."""
    budget = ["sampler=homogeneous", "model.gradcache.chunk_size=4", "data.group_by_length=true",
              "data.max_tokens_per_batch=64", "+callbacks.chunks._target_=resume_probe.ChunkRecorder",
              "evaluate_before=false", "evaluate_after=false"]
    straight = tmp_path / "straight"
    train(straight, tiny_cfg, [*budget, f"+callbacks.chunks.path={tmp_path}/chunks.txt"])
    rows = [tuple(map(int, line.split())) for line in (tmp_path / "chunks.txt").read_text().splitlines()]
    assert len(rows) == 12
    assert all(tokens <= 64 or n == 1 for _, _, tokens, n in rows)  # every chunk within the budget (or one row)
    assert max(chunks for _, chunks, _, _ in rows) > 2  # the budget cut chunks of fewer than 4 rows
    killed = tmp_path / "killed"
    kill = ["+callbacks.kill._target_=fault_probes.SignalAt", "+callbacks.kill.step=7",
            "+callbacks.kill.signal=SIGKILL", f"+callbacks.kill.marker={tmp_path}/killed_once",
            f"+callbacks.chunks.path={tmp_path}/chunks_killed.txt"]
    proc = train(killed, tiny_cfg, [*budget, *kill], check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert sorted(losses(killed)) == list(range(1, 8))
    train(killed, tiny_cfg, [*budget, *kill])
    # The resume started from the step-6 checkpoint (steps 7-12 again), not from scratch …
    assert len((killed / "losses.txt").read_text().splitlines()) == 7 + 6
    resumed = [tuple(map(int, line.split())) for line in (tmp_path / "chunks_killed.txt").read_text().splitlines()]
    # (the recorder, listed before the kill callback, saw step 8 start before the kill)
    assert [r[0] for r in resumed] == [*range(1, 9), *range(7, 13)]
    # … with the uninterrupted run's batches cut into the same chunks, and its losses.
    assert resumed[:8] == rows[:8] and resumed[8:] == rows[6:]
    a, b = losses(straight), losses(killed)
    assert [b[s] for s in range(7, 13)] == pytest.approx([a[s] for s in range(7, 13)], rel=1e-6, abs=1e-7)


def test_sigterm_saves_the_current_step_and_the_readme_command_resumes_it(tmp_path, tiny_cfg, straight):
    run = tmp_path / "run"
    # SIGTERM while step 2 runs: before the first periodic checkpoint (step 3)
    proc = train(run, tiny_cfg, ["+callbacks.stop._target_=fault_probes.SignalAt", "+callbacks.stop.step=1",
                                 f"+callbacks.stop.marker={tmp_path}/signalled"], check=False)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "Stopped by SIGTERM at step 2: checkpoint saved to" in out
    assert f"python train.py resume={run}" in out  # the command to continue (absolute: run is outside cwd)
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True, mmap=True)["global_step"] == 2
    assert sorted(losses(run)) == [1, 2]
    recorded = (run / ".hydra" / "config.yaml").read_text()

    # Refused before any work: the run directory is in use (we hold its lock) …
    from operations.lock import RunLock

    with RunLock(run):
        busy = python_train([f"resume={run}"])
    assert busy.returncode != 0 and f"PID {os.getpid()} on host {socket.gethostname()}" in busy.stderr, busy.stderr
    # … and a resume that changes the loss; both leave the run's recorded config in .hydra/ as it was.
    changed = python_train([f"resume={run}", "loss.alpha=3", "loss.temperature=0.02"])
    assert changed.returncode != 0 and "loss.alpha: 9 → 3" in changed.stderr, changed.stderr[-2000:]
    assert "loss.temperature:" not in changed.stderr  # a restated value is no change
    assert "Traceback" not in changed.stderr + busy.stderr  # a refusal, not a crash
    assert (run / ".hydra" / "config.yaml").read_text() == recorded
    assert sorted(p.name for p in (run / "attempts").iterdir()) == ["001"]

    orphan = run / "checkpoints" / ".last.ckpt.abc123.tmp"  # what a save killed mid-write leaves
    orphan.write_bytes(b"partial")
    resumed = python_train([f"resume={run}"])  # the README's command, nothing else
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming from" in resumed.stdout and "(step 2)" in resumed.stdout
    assert not orphan.exists()
    # Each Lightning line once (it was logged twice: Lightning's own handler and Hydra's), and the resume wrote
    # last.ckpt again rather than a last-v1.ckpt beside it (issue 22).
    assert (resumed.stdout + resumed.stderr).count("`Trainer.fit` stopped: `max_steps=12` reached") == 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "last.prev.ckpt"]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 12

    # It continued with the recorded loss (hardness-weighted, α = 9): the losses equal the uninterrupted run's.
    a, b = losses(straight), losses(run)
    assert sorted(b) == list(range(1, 13))
    assert [b[s] for s in range(1, 13)] == pytest.approx([a[s] for s in range(1, 13)], rel=1e-6, abs=1e-7)
    attempt = yaml.safe_load((run / "attempts" / "002" / "config.yaml").read_text())
    assert attempt["loss"]["_target_"] == "losses.HardnessWeightedInfoNCE" and attempt["loss"]["alpha"] == 9
    assert (run / ".hydra" / "config.yaml").read_text() == (run / "attempts" / "002" / "config.yaml").read_text()
    # Complete metrics history: every step's training loss once, as in the uninterrupted run.
    history, reference = logged_losses(run), logged_losses(straight)
    assert [s for s, _ in history] == [s for s, _ in reference] == list(range(12))
    assert [v for _, v in history] == pytest.approx([v for _, v in reference], rel=1e-6)
    # The untrained figure of the first attempt is kept in the summary of the finished run.
    summary = (run / "summary.txt").read_text()
    assert summary.startswith("Overall on 9 eval datasets: untrained ") and "(step 12)" in summary


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    from embedders.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    real_save = torch.save

    def crashing_save(obj, f, *a, **kw):
        f.write(b"partial bytes of a checkpoint")
        raise KeyboardInterrupt("killed during the write")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left behind


@pytest.mark.slow
def test_sigterm_to_rank_zero_of_a_ddp_run_stops_every_rank_at_the_same_step(tmp_path, tiny_cfg):
    """`kill <rank 0>` under DDP (2 gloo processes): the ranks agree on the stop after the same step, save
    one checkpoint together (no hang), exit 143, and `resume=` continues to the end."""
    run = tmp_path / "run"
    args = tiny_cfg([f"hydra.run.dir={run}", "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=8",
                     "trainer.val_check_interval=100", "data.val_batch_size=10", "evaluate_before=false",
                     "eval_data.max_rows=4", "+callbacks.stop._target_=fault_probes.SignalAt", "+callbacks.stop.step=3",
                     "+callbacks.stop.rank=0", f"+callbacks.stop.marker={tmp_path}/signalled"])
    stopped = python_train(args)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 4
    resumed = python_train([f"resume={run}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 8


@pytest.mark.slow
def test_a_ranks_stuck_dataloader_worker_stops_a_ddp_run_instead_of_hanging_it(tmp_path, tiny_cfg):
    """Rank 1's DataLoader worker never delivers (as a child deadlocked after fork would; SIGTERM ignored): after
    its loaders' time-out (5 s here) that rank stops its workers and raises, naming what happened and how to resume,
    and the whole 2-rank run exits non-zero well before rank 0's own time-out (600 s): no rank is left waiting."""
    run = tmp_path / "run"
    args = tiny_cfg([f"hydra.run.dir={run}", "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=8",
                     "data.num_workers=1", "evaluate_before=false", "evaluate_after=false",
                     "+callbacks.stuck._target_=fault_probes.StuckWorkers", "+callbacks.stuck.rank=1",
                     "+callbacks.stuck.timeout_s=5"])
    start = time.perf_counter()
    stopped = python_train(args)
    assert stopped.returncode != 0, stopped.stderr[-3000:]
    assert "training: the DataLoader's 1 worker(s) gave no batch in 5 s" in stopped.stderr, stopped.stderr[-3000:]
    assert "train.py resume=" in stopped.stderr
    assert time.perf_counter() - start < 300


@pytest.mark.slow
def test_ctrl_c_with_dataloader_workers_saves_the_current_step(tmp_path, tiny_cfg):
    """Ctrl-C reaches the whole process group, DataLoader workers included: they ignore it and keep feeding
    the step being finished; the main process saves it and exits 130."""
    run = tmp_path / "run"
    args = tiny_cfg([f"hydra.run.dir={run}", "trainer.max_steps=8", "data.num_workers=2", "evaluate_before=false",
                     "evaluate_after=false", "+callbacks.stop._target_=fault_probes.SignalAt", "+callbacks.stop.step=3",
                     "+callbacks.stop.signal=SIGINT", "+callbacks.stop.group=true"])
    stopped = python_train(args, new_session=True)  # its own process group: the test runner is not signalled
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "Stopped by SIGINT at step 4" in stopped.stdout + stopped.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 4
