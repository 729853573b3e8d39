"""Validation on any number of ranks gives the metrics of a single-process validation of the same rows.

The probe runs one training step with lr 0 (the weights stay the initial ones) and a validation through
Lightning with gloo ranks; the reference is the same probe on one process. Before, fewer validation batches
than ranks stopped Lightning ("DataLoader within local rank has zero length") and an uneven split (2 + 1)
mismatched the DDP forward's collectives."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROBE = Path(__file__).resolve().parents[1] / "helpers" / "val_probe.py"
_spec = importlib.util.spec_from_file_location("val_probe", PROBE)
val_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(val_probe)

# 20 validation rows (4 per subset × 5 subsets)
ROWS = 20


def _reference(tmp_path, bundled_root, batch):
    val_probe.run(tmp_path / "one", bundled_root, 1, 4, batch)
    return torch.load(tmp_path / "one" / "rank0.pt")


def _ranks(tmp_path, bundled_root, devices, batch):
    out = tmp_path / f"ranks{devices}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(PROBE), str(out), str(bundled_root), "--devices", str(devices),
                           "--val-per-subset", "4", "--val-batch-size", str(batch)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(devices)]


def _check(ranks, ref, steps_per_rank):
    assert set(ref["metrics"]) >= {"val/loss", "val/recall@1", "val/recall@5", "val/sim_overlap"}
    for r in ranks:
        assert r["val_steps"] == steps_per_rank  # every rank ran the same number of steps
        assert set(r["metrics"]) == set(ref["metrics"])
        for k, v in ref["metrics"].items():
            assert r["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
        # Same rows in the same order; values to float rounding (the reference may run with another thread count).
        for side in ("positive", "negative"):
            assert r[side].shape == ref[side].shape
            torch.testing.assert_close(r[side], ref[side], rtol=1e-5, atol=1e-6)
    assert ref["positive"].numel() == ROWS


@pytest.mark.parametrize(("devices", "batch", "steps"), [(2, 7, 2), pytest.param(3, 10, 1, marks=pytest.mark.slow)],
                         ids=["2ranks_3batches", "3ranks_2batches"])
def test_validation_on_ranks_equals_one_process(tmp_path, bundled_root, devices, batch, steps):
    ref = _reference(tmp_path, bundled_root, batch)
    _check(_ranks(tmp_path, bundled_root, devices, batch), ref, steps)
