"""benchmarks/gpu_check.py (`make gpu-check`) cannot run here (no GPU); its `--dry-run` runs the same code on the
tiny model on CPU (trainer=cpu / fsdp_cpu, bf16 autocast): the cases, the summary and the throughput table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _dry_run(tmp_path, *extra):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--json", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_dry_run_of_fsdp_gradcache_and_lora(tmp_path):
    printed, result = _dry_run(tmp_path, "--cases", "fsdp GradCache,gpu LoRA")
    rows = {r["case"]: r for r in result["rows"]}
    assert sorted(rows) == ["fsdp GradCache", "gpu LoRA"]
    for row in rows.values():
        assert row["status"] == "ok" and row["steps"] == 2, row
    assert "trainer=fsdp_cpu" in rows["fsdp GradCache"]["overrides"]
    assert "## embedlab GPU check" in printed and "| fsdp GradCache | ok | 2 |" in printed
    assert "## Training throughput" in printed and "| GradCache + checkpointing |" in printed
    assert "not measured: no CUDA device" in printed


@pytest.mark.slow
def test_dry_run_of_every_case(tmp_path):
    printed, result = _dry_run(tmp_path, "--no-throughput")
    assert len(result["rows"]) == 6 and all(r["status"] == "ok" for r in result["rows"]), result["rows"]
    fsdp_full = next(r for r in result["rows"] if r["case"] == "fsdp full FT")
    assert "last.ckpt" in fsdp_full["checkpoints"]  # the sharded checkpoint was written


def test_without_a_gpu_it_says_so():
    if __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    assert gpu_check.main([]) == 2
