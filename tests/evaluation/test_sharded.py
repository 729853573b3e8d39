"""Sharded evaluation: the encoding split over processes gives what one process gives.

`gather_strided` is checked on real gloo process groups against the matrix built in one process
(including shards that are empty); `python evaluate.py devices=2 device=cpu` is checked against the
same command with one process: with batch size 1 every item is encoded alone in both runs, so the
embeddings, and therefore every score, must agree exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "helpers" / "gather_probe.py"


@pytest.mark.parametrize(("world", "totals"), [(2, [7, 1, 2]), (3, [8, 2])])
def test_gather_strided_restores_the_original_order(tmp_path, world, totals):
    """Uneven shards (7 over 2), empty shards (1 or 2 rows over 3 ranks), exact division."""
    proc = subprocess.run([sys.executable, str(PROBE), str(tmp_path), "--world", str(world),
                           "--totals", ",".join(map(str, totals)), "--dim", "3"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for total in totals:
        expected = torch.arange(total, dtype=torch.float32).unsqueeze(1).repeat(1, 3)
        for r in range(world):
            assert torch.equal(torch.load(tmp_path / f"rank{r}_total{total}.pt"), expected)


def test_gather_strided_refuses_a_wrong_shard():
    import torch.distributed as dist

    from evaluation.encoding import gather_strided

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="rank 0 holds 2 rows"):
            gather_strided(torch.zeros(2, 3), 5, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


# slow (~40-70 s, two evaluate processes); the fast proof of sharded encoding = one process is
# tests/evaluation/test_encoding.py::test_sharded_sorted_encoding_equals_one_process_and_a_rank_failure_reaches_every_rank
@pytest.mark.slow
def test_two_processes_score_exactly_like_one(tiny_cfg, tmp_path):
    bundled = [o for o in tiny_cfg() if o.startswith("bundled.")]
    results = {}
    for devices in (1, 2):
        out = tmp_path / f"devices{devices}"
        cmd = [sys.executable, "evaluate.py", "device=cpu", f"devices={devices}", "eval.batch_size=1",
               "eval_data.max_rows=3", *bundled, f"hydra.run.dir={out}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("MEMBER: 2/2" in proc.stdout + proc.stderr) == (devices == 2)  # really two processes
        results[devices] = json.loads((out / "results.json").read_text())
    assert results[2] == results[1]
    assert len(results[1]["datasets"]) == 9


@pytest.mark.parametrize(("devices", "device", "message"), [
    (0, "cpu", "devices must be a positive integer"),
    ("2", "cpu", "devices must be a positive integer"),
    (2, "meta", "neither"),
    pytest.param(2, "cuda", "CUDA device", marks=pytest.mark.skipif(torch.cuda.device_count() >= 2,
                                                                     reason="enough GPUs here")),
])
def test_bad_devices_are_refused(devices, device, message):
    from omegaconf import OmegaConf

    from evaluation.job import launch

    with pytest.raises(ValueError, match=message):
        launch(OmegaConf.create({"devices": devices, "device": device}))
