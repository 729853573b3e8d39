"""The end of an FSDP run: the trained weights are sharded across ranks, so the Embedder that rank 0
saves and scores is an unwrapped copy built from the gathered full state dict
(`embedders.strategies.standalone_module`). Two gloo processes shard the tiny Qwen2-VL module the way
`trainer=fsdp` does (tests/helpers/fsdp_gather.py), and rank 0's copy must hold exactly the weights the sharded
model holds, including a change made through the sharded parameters; with LoRA too. The learnable temperature
(a 1-element parameter, sharded as a root of its own) is gathered and left out of the copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "fsdp_gather.py"


# The full fine-tuning variant is slow (2 gloo processes): the parity tests gather full weights under FSDP too.
@pytest.mark.parametrize("lora", [pytest.param(False, marks=pytest.mark.slow), True], ids=["full", "lora"])
def test_rank_zero_copy_holds_the_sharded_weights(tmp_path, lora):
    cmd = [sys.executable, str(HELPER), str(tmp_path), *(["--lora"] if lora else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = torch.load(tmp_path / "result.pt")
    copy, expected = result["copy"], result["expected"]
    assert not result["wrapped"]
    assert set(copy) == set(expected)
    for key, value in expected.items():
        assert torch.equal(copy[key], value), key
    assert ("lora_" in result["changed"]) == lora
    assert "loss.temperature.log_scale" in result["state_keys"]  # gathered, then left out of the copy
    assert torch.load(tmp_path / "rank1.pt")["state_keys"] == []  # rank0_only: nothing materialised elsewhere


def test_other_strategies_keep_the_module():
    from types import SimpleNamespace

    from embedders.strategies import standalone_module

    module = torch.nn.Linear(2, 2)
    trainer = SimpleNamespace(is_global_zero=True)
    assert standalone_module(trainer, module) is module
