"""Row counts for the cross-device gather are exchanged on the host (no device sync): on the default group
under gloo, and through a separate gloo group when the default one is NCCL — same results either way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

PROBE = Path(__file__).resolve().parents[1] / "helpers" / "host_counts_probe.py"


def test_counts_exchanged_on_the_host_give_the_same_gather(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    procs = [subprocess.Popen([sys.executable, str(PROBE), str(tmp_path), str(r), "2", init],
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt")
        (q0, n0, off0, loc0), (q1, n1, off1, loc1) = res["results"]
        assert res["side_group_size"] == 2
        assert torch.equal(q0, q1) and torch.equal(n0, n1) and (off0, loc0) == (off1, loc1)
        # rank 0 holds 3 pairs and 0 negatives, rank 1 4 pairs and 2 negatives
        assert q0[:, 0].tolist() == [0.0] * 3 + [1.0] * 4 and n0[:, 0].tolist() == [1.5, 1.5]
        assert (off0, loc0) == ((0, 3) if r == 0 else (3, 4))
