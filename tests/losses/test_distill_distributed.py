"""Distillation (with symmetric InfoNCE and the in-batch false-negative options) and guided filtering through
Lightning: under GradCache, and on 2 gloo ranks with the cross-device gather, the loss and every parameter gradient
equal a plain single process on the concatenated batch (tests/helpers/ddp_step.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "ddp_step.py"
_spec = importlib.util.spec_from_file_location("ddp_step_distill", HELPER)
ddp_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_step)


def _relative_error(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    num = sum(((a[n] - b[n]).double() ** 2).sum() for n in b)
    den = sum((b[n].double() ** 2).sum() for n in b)
    return float((num / den).sqrt())


def _through_lightning(out: Path, devices: int, sizes: str, negatives: str, chunk: int, loss: str):
    cmd = [sys.executable, str(HELPER), str(out), "--devices", str(devices), "--sizes", sizes, "--negatives", negatives,
           "--chunk", str(chunk), "--loss", loss]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(devices)]


def _check(ranks, sizes, negatives, loss):
    ref_loss, ref_grads = ddp_step.reference_step(sizes, negatives, None, 0.0, loss=loss)
    assert sum(r["loss"] for r in ranks) / len(ranks) == pytest.approx(ref_loss, rel=1e-5)
    for r in ranks:
        assert _relative_error(r["grads"], ref_grads) < 1e-5
    # Negative control: plain InfoNCE on the same batch has clearly different gradients.
    _, plain = ddp_step.reference_step(sizes, negatives, None, 0.0)
    assert _relative_error(plain, ref_grads) > 1e-3


@pytest.mark.parametrize("loss", ["distill", pytest.param("guided", marks=pytest.mark.slow)])
def test_gradcache_equals_plain_step(tmp_path, loss):
    ranks = _through_lightning(tmp_path, 1, "7", "2", 3, loss)
    _check(ranks, [7], [2], loss)


@pytest.mark.parametrize("loss", ["distill", pytest.param("guided", marks=pytest.mark.slow)])
def test_two_ranks_equal_one_process(tmp_path, loss):
    ranks = _through_lightning(tmp_path, 2, "4,3", "1,2", 0, loss)
    _check(ranks, [4, 3], [1, 2], loss)


@pytest.mark.slow
def test_two_ranks_with_gradcache_equal_one_process(tmp_path):
    ranks = _through_lightning(tmp_path, 2, "4,3", "1,2", 2, "distill")
    _check(ranks, [4, 3], [1, 2], "distill")
