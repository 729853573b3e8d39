"""Exact resume and atomic checkpoints.

A run killed with SIGKILL mid-epoch and restarted in the same run directory (ckpt_path=auto) must
produce the same subsequent losses as the uninterrupted run: model, optimizer, LR scheduler,
sampler position and RNG (dropout is on) all restored."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "helpers"


def train(run_dir: Path, tiny_cfg, extra: list[str], check: bool = True):
    args = tiny_cfg([
        f"hydra.run.dir={run_dir}", "trainer.max_steps=12", "callbacks.model_checkpoint.every_n_train_steps=3",
        "trainer.val_check_interval=4", "evaluate_before=false", "evaluate_after=false", "save_embedder=false",
        "+model.config.text.attention_dropout=0.2",
        "+callbacks.recorder._target_=resume_probe.LossRecorder", f"+callbacks.recorder.path={run_dir}/losses.txt",
        *extra])
    env = {**os.environ, "PYTHONPATH": f"{HELPERS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "losses.txt").read_text().splitlines():
        step, value = line.split()
        out[int(step)] = float(value)
    return out


def test_killed_run_resumes_exactly(tmp_path, tiny_cfg):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(straight, tiny_cfg, [])
    proc = train(killed, tiny_cfg, ["+callbacks.kill._target_=resume_probe.KillAt", "+callbacks.kill.step=7"],
                 check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]  # really killed, mid-epoch (an epoch is 35 steps)
    assert sorted(losses(killed)) == list(range(1, 8))
    train(killed, tiny_cfg, [])  # same run directory: ckpt_path=auto picks up checkpoints/last.ckpt (step 6)
    a, b = losses(straight), losses(killed)
    assert sorted(a) == list(range(1, 13))
    resumed = [s for s in range(7, 13)]
    assert [b[s] for s in resumed] == pytest.approx([a[s] for s in resumed], rel=1e-6, abs=1e-7)
    # step 7 ran twice in the killed directory; its recorded values agree too
    lines = (killed / "losses.txt").read_text().splitlines()
    assert len(lines) == 7 + 6


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
