"""Run paths paste bare: a run of `loss=hardness_weighted loss.alpha=9` gets a directory name that a shell and Hydra
read as typed, the resume command printed when a signal stops it runs as printed, and `evaluate.py
embedder_dir=<run>/embedder` scores it — each line pasted through a shell exactly as the project prints it. A run
directory of an older embedlab, whose name holds `=`, pastes too (quoted for Hydra on the way in)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROBES = os.pathsep.join(str(p) for p in (ROOT / "tests" / "helpers", ROOT / "tests" / "entrypoints"))


def _env(root: Path) -> dict:
    return {**os.environ, "EMBEDLAB_ROOT": str(root),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{PROBES}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def shell(line: str, root: Path) -> subprocess.CompletedProcess:
    """`line` through bash from the repository root, as a user pastes it."""
    return subprocess.run(["bash", "-c", line], cwd=ROOT, env=_env(root), capture_output=True, text=True, timeout=600)


def test_run_directory_name_resume_line_and_evaluate_paste_bare(tmp_path, tiny_cfg, bundled_root):
    small = " ".join(shlex.quote(o) for o in tiny_cfg([
        "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2", "trainer.val_check_interval=100",
        "evaluate_before=false", "evaluate_after=false", "+callbacks.stop._target_=fault_probes.SignalAt",
        "+callbacks.stop.step=1", f"+callbacks.stop.marker={tmp_path}/signalled"]))
    stopped = shell(f"python train.py loss=hardness_weighted loss.alpha=9 {small}", tmp_path)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert "loss.alpha-9" in run.name and re.fullmatch(r"[A-Za-z0-9._+-]+", run.name), run.name
    printed = re.findall(r"(python train\.py resume=\S+)", stopped.stdout + stopped.stderr)
    assert printed, (stopped.stdout + stopped.stderr)[-3000:]
    resumed = shell(printed[-1], tmp_path)  # exactly as printed, nothing added
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    evaluated = shell(f"python evaluate.py embedder_dir={run}/embedder eval_data.max_rows=4 "
                      f"{shlex.quote(f'bundled.root={bundled_root}')} bundled.train_per_subset=60 "
                      "bundled.eval_per_dataset=12", tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Overall" in evaluated.stdout


@pytest.mark.parametrize("name", ["2026-01-01_00-00-00_tiny_qwen2vl_hardness_weighted_random_loss.alpha=9",
                                  "my run (copy)"])
def test_an_old_run_directory_with_unsafe_characters_pastes_as_typed(tmp_path, name):
    """Directories of earlier versions (`…_loss.alpha=9`) or renamed by a user: `resume=`/`embedder_dir=` take
    them bare (a shell-quoted path for the space), not Hydra's "mismatched input '='" or "no such run directory"."""
    run = tmp_path / "logs" / "train" / "runs" / name
    run.mkdir(parents=True)
    for key, line in (("embedder_dir", f"python evaluate.py embedder_dir={shlex.quote(str(run))} --cfg job"),
                      ("resume", f"python train.py resume={shlex.quote(str(run))} --cfg job")):
        proc = shell(line, tmp_path)
        out = proc.stdout + proc.stderr
        assert "mismatched input" not in out and "no such run directory" not in out, out[-2000:]
        assert proc.returncode == 0, out[-2000:]
        assert yaml.safe_load(proc.stdout)[key] == str(run)  # the path as typed, no quotes kept
