"""Exact resume with several ranks: every rank saves and restores its own RNG states (CPU, CUDA, numpy,
Python); the DataLoader generator is restored with the loop state. The fast test checks the per-rank
save/restore on 2 gloo processes; the slow ones kill a 2-rank train.py run with SIGKILL and resume it, with
dropout, plain / GradCache / 2 DataLoader workers / LoRA under FSDP, and compare every rank's losses with the
uninterrupted run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "helpers"


def test_each_rank_restores_its_own_rng_states(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    procs = [subprocess.Popen([sys.executable, str(HELPERS / "rng_probe.py"), str(tmp_path), str(r), "2", init],
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    draws = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for d in draws:
        assert torch.equal(d["after_restore"], d["expected"])  # the rank's own continuation
    assert not torch.equal(draws[0]["expected"], draws[1]["expected"])  # ranks really had different states


def _losses(run_dir: Path, rank: int) -> dict[int, float]:
    out = {}
    for line in (run_dir / f"losses.txt.rank{rank}").read_text().splitlines():
        step, value = line.split()
        out[int(step)] = float(value)
    return out


def _wait_gone(run_dir: Path, timeout: float = 60) -> None:
    for f in run_dir.glob("pid.rank*"):
        pid = int(f.read_text())
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)


def _train(run_dir, tiny_cfg, extra, more, check=True, dropout=("+model.config.text.attention_dropout=0.2",)):
    args = tiny_cfg([
        f"hydra.run.dir={run_dir}", "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_steps=12",
        "callbacks.model_checkpoint.every_n_train_steps=3", "trainer.val_check_interval=4",
        "evaluate_before=false", "evaluate_after=false", "save_embedder=false", *dropout,
        "+callbacks.recorder._target_=resume_probe.LossRecorder", f"+callbacks.recorder.path={run_dir}/losses.txt",
        *extra, *more])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{HELPERS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _kill_and_resume(tmp_path, train) -> tuple[Path, Path]:
    """The run straight, and the same run killed with SIGKILL at step 7 then resumed in its directory."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(straight, [])
    killed.mkdir()
    proc = train(killed, ["+callbacks.kill._target_=resume_probe.KillAt", "+callbacks.kill.step=7",
                          f"+callbacks.kill.pid_dir={killed}", f"+callbacks.kill.marker={tmp_path}/killed_once"],
                 check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]
    _wait_gone(killed)
    # The same directory again: the run's recorded config (kill callback included, spent) resumes from
    # checkpoints/last.ckpt (step 6) on 2 ranks.
    train(killed, [])
    for rank in range(2):
        a, b = _losses(straight, rank), _losses(killed, rank)
        assert sorted(a) == list(range(1, 13))
        assert [b[s] for s in range(7, 13)] == pytest.approx([a[s] for s in range(7, 13)], rel=1e-6, abs=1e-7)
    # the ranks' losses differ (different rows, different dropout masks): two real ranks were compared
    assert _losses(straight, 0)[7] != _losses(straight, 1)[7]
    return straight, killed


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["model.gradcache.chunk_size=4"], ["data.num_workers=2"]],
                         ids=["plain", "gradcache", "workers"])
def test_two_rank_run_killed_and_resumed_reproduces_the_losses(tmp_path, tiny_cfg, extra):
    _kill_and_resume(tmp_path, lambda run_dir, more, check=True: _train(run_dir, tiny_cfg, extra, more, check))


@pytest.mark.slow
def test_fsdp_lora_run_killed_and_resumed_reproduces_the_losses(tmp_path, tiny_cfg):
    """LoRA under FSDP (trainer=fsdp_cpu, a base loaded from model.path, LoRA dropout): its sharded checkpoints hold
    the adapters only, and a run killed with SIGKILL resumes from one exactly."""
    from embedders import Embedder

    base = Embedder.build("qwen2_vl", config={"text": {"hidden_size": 64}}).save_pretrained(tmp_path / "base")
    extra = ["trainer=fsdp_cpu", f"model.path={base}", "model.config=null", "model.lora={r:4,alpha:8,dropout:0.2}"]
    _, killed = _kill_and_resume(tmp_path, lambda run_dir, more, check=True: _train(
        run_dir, tiny_cfg, extra, more, check, dropout=()))
    from torch.distributed.checkpoint import FileSystemReader

    ckpt = killed / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir()  # sharded: every rank wrote its shard
    tensors = [k.removeprefix("state_dict.") for k in FileSystemReader(ckpt).read_metadata().state_dict_metadata
               if k.startswith("state_dict.")]
    assert tensors and all("lora_" in k for k in tensors), tensors[:5]
    meta = torch.load(ckpt / "meta.pt", weights_only=True)
    assert meta["embedlab_frozen_keys"] and not any("lora_" in k for k in meta["embedlab_frozen_keys"])
