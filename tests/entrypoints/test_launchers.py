"""Sweeps: the SLURM (submitit) launcher config composes into a valid submitit configuration, and a
small multirun runs end to end with the basic launcher (readable job names, one directory per job)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_basic_launcher_multirun(tiny_cfg, tmp_path):
    sweep = tmp_path / "sweep"
    args = [a for a in tiny_cfg(["trainer.max_steps=2", "evaluate_before=false", "eval_data.max_rows=4",
                                 f"hydra.sweep.dir={sweep}"])]
    out = subprocess.run([sys.executable, "train.py", "-m", "loss=infonce,hardness_weighted", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 2 and jobs[0].startswith("0_") and jobs[1].startswith("1_")
    # readable: the swept value is in the name; path-valued and infrastructure overrides are not
    assert "loss=infonce" in jobs[0] and "loss=hardness_weighted" in jobs[1]
    assert not any("bundled.root" in j or "callbacks." in j for j in jobs)
    for job in jobs:
        assert (sweep / job / "eval" / "results.json").is_file()
        assert (sweep / job / "checkpoints" / "last.ckpt").is_file()
