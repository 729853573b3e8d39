"""The evaluations inside `train.py` under DDP are shared by all ranks (the sharding of `evaluate.py
devices=N`) and give exactly what one process gives: the untrained scores equal `evaluate.py` on the same
initial model, the trained scores equal `evaluate.py` on the saved Embedder (batch size 1 in both, so every
item is encoded alone and the embeddings agree bit for bit). The same run validates 5 rows (one batch) on
2 ranks inside train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.mark.slow
def test_train_py_evaluation_on_two_ranks_equals_one_process(tmp_path, tiny_cfg):
    run = tmp_path / "run"
    eval_opts = ["eval.batch_size=1", "eval_data.max_rows=3"]
    _run(["train.py", *tiny_cfg([f"hydra.run.dir={run}", "trainer=ddp_cpu", "trainer.devices=2",
                                 "data.val_per_subset=1", *eval_opts])])  # 5 validation rows: 1 batch, 2 ranks
    bundled = [o for o in tiny_cfg() if o.startswith("bundled.")]
    one = {}
    for name, source in (("before", []), ("after", [f"embedder_dir={run / 'embedder'}"])):
        out = tmp_path / name
        _run(["evaluate.py", "device=cpu", *bundled, *eval_opts, *source, f"hydra.run.dir={out}"])
        one[name] = json.loads((out / "results.json").read_text())
    assert json.loads((run / "eval_untrained" / "results.json").read_text()) == one["before"]
    assert json.loads((run / "eval" / "results.json").read_text()) == one["after"]
    assert len(one["after"]["datasets"]) == 9
    metrics = (run / "csv" / "metrics.csv").read_text()
    assert "val/recall@1" in metrics
