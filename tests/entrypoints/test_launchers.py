"""Sweeps: the SLURM (submitit) launcher config composes into a valid submitit configuration, and a
small multirun runs end to end with the basic launcher (readable job names, one directory per job)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]


def test_slurm_launcher_config_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "trainer=slurm", "hydra.launcher.gpus_per_node=4",
                                "hydra.launcher.nodes=2", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 4 and launcher.nodes == 2 and launcher.partition == "gpu"
    assert launcher.max_num_timeout > 0  # submitit requeues on timeout/preemption
    # the trainer follows the launcher: one rank per GPU, Lightning's own SLURM requeue switched off
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    assert cfg.trainer.devices == 4 and cfg.trainer.num_nodes == 2
    plugins = OmegaConf.to_container(cfg.trainer.plugins)
    assert {"_target_": "lightning.pytorch.plugins.environments.SLURMEnvironment", "auto_requeue": False} in plugins


def test_cfg_hydra_shows_the_submitit_configuration():
    out = subprocess.run([sys.executable, "train.py", "-m", "loss=infonce,hardness_weighted", "hydra/launcher=slurm",
                          "--cfg", "hydra"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "SlurmLauncher" in out.stdout and "tasks_per_node" in out.stdout and "max_num_timeout: 5" in out.stdout
    assert "mode: MULTIRUN" in out.stdout and "first job" in out.stderr


@pytest.mark.slow  # the README's sweep test runs the same launcher from the repository root in the fast suite
def test_basic_launcher_multirun_with_the_default_sweep_dir_from_another_directory(tiny_cfg, tmp_path):
    """`-m` without hydra.sweep.dir (the sweep directory interpolates the start directory), started outside
    the repository: jobs land in <start dir>/logs/train/multiruns/<time>/<n>_<overrides>."""
    args = tiny_cfg(["trainer.max_steps=2", "evaluate_before=false", "eval_data.max_rows=4"])
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "loss=infonce,hardness_weighted", *args],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0_") and jobs[1].startswith("1_")
    # readable: the swept value is in the name; path-valued and infrastructure overrides are not
    assert "loss-infonce" in jobs[0] and "loss-hardness_weighted" in jobs[1]
    assert all(re.fullmatch(r"[A-Za-z0-9._+-]+", j) for j in jobs), jobs  # paste-safe in a shell and in Hydra
    assert not any("bundled.root" in j or "callbacks." in j for j in jobs)
    for job in jobs:
        assert (sweep / job / "eval" / "results.json").is_file()
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
        assert (sweep / job / "attempts" / "001" / "config.yaml").is_file()


def test_make_sweep_reaches_submitit(tmp_path):
    """`make sweep` (the SLURM loss ablation) composes, resolves its sweep directory and gets as far as
    submitit, which stops on a machine without SLURM with its own message: no error of ours before it."""
    make = (ROOT / "Makefile").read_text()
    command = make.split("\nsweep:", 1)[1].split("\n\t", 1)[1].split("\n", 1)[0]
    assert command.startswith("$(PY) train.py -m hydra/launcher=slurm trainer=slurm")
    args = command.replace("$(PY) train.py ", "").replace(" $(ARGS)", "").split()
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), *args, "hydra.launcher.partition=gpu"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert 'Could not detect "srun", are you indeed on a slurm cluster?' in out.stderr, out.stderr[-3000:]
    assert "InterpolationResolutionError" not in out.stderr and "HydraConfig was not set" not in out.stderr


@pytest.mark.slow
def test_submitit_requeue_resumes_from_the_checkpoint_of_the_signalled_step(tiny_cfg, tmp_path):
    """SLURM requeue as submitit does it, on this machine: the local executor runs the job under submitit's
    job environment; a SIGUSR2 at step 3 (what SLURM sends before the time limit) makes train.py finish the
    step, save, and hand over to submitit, which requeues the job; the requeued job resumes from step 4 in
    the same directory and finishes."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT),
                                                        os.environ.get("PYTHONPATH", "")])}
    args = tiny_cfg(["trainer.max_steps=8", "evaluate_before=false", "eval_data.max_rows=4",
                     "callbacks.model_checkpoint.every_n_train_steps=100", "hydra/launcher=submitit_local",
                     "hydra.launcher.timeout_min=30", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                     "+callbacks.usr2._target_=fault_probes.SignalAt", "+callbacks.usr2.step=3",
                     "+callbacks.usr2.signal=SIGUSR2", f"+callbacks.usr2.marker={tmp_path / 'sent'}"])
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    (job,) = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.startswith("0_")]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*_log.*"))
    assert "Stopped by SIGUSR2 at step 4: checkpoint saved to" in logs
    assert "Requeued job" in logs and "resuming from" in logs and "(step 4)" in logs
    assert sorted(p.name for p in (job / "attempts").iterdir()) == ["001", "002"]
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 8
    assert (job / "eval" / "results.json").is_file()
