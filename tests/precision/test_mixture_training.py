"""Training on a mixture with same-source sub-batches and the online evaluation, through Lightning:

- on 2 gloo ranks every sub-batch is single-source, the ranks run the same number of steps on disjoint rows, and
  the online evaluation (every step, all ranks sharing the encoding) equals the single-process evaluation of the
  same subset (`evaluation.runner.score` on one process, the initial model: the probe trains with lr 0);
- GradCache with chunks of the sub-batch size gives the gradients of the plain step on the same batch.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from datamodules.builders.bundled_v2 import ensure_bundled_v2
from evaluation.online import read_curve
from evaluation.runner import build_suite, result_metrics, score

PROBE = Path(__file__).resolve().parents[1] / "helpers" / "mixture_probe.py"
_spec = importlib.util.spec_from_file_location("mixture_probe", PROBE)
mixture_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mixture_probe)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return ensure_bundled_v2(tmp_path_factory.mktemp("mixture") / "bundled_v2", queries_per_dataset=3,
                             train_rows_per_subset=8)


def _single_process_online(world: Path) -> dict:
    module = mixture_probe.build_module(None)
    results = score(module.embedder, build_suite(mixture_probe.eval_data(world)), mixture_probe.EVAL_CFG, "reference",
                    report=False)
    return result_metrics(results, "online")


def test_two_gloo_ranks_sub_batches_and_online_eval_equal_one_process(tmp_path, world):
    out = tmp_path / "ranks"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(PROBE), str(out), str(world), "--devices", "2"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    # Same step count on every rank; each step's device batches hold disjoint rows; every sub-batch one source.
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == 2
    h = mixture_probe.SUB_BATCH
    for step in range(2):
        a, b = ranks[0]["ids"][step], ranks[1]["ids"][step]
        assert len(a) == len(b) == mixture_probe.BATCH and not set(a) & set(b)
        for ids in (a, b):
            for s in range(0, len(ids), h):
                assert len({i.split("/")[0] for i in ids[s : s + h]}) == 1, ids
    # The online evaluation, at steps 0, 1 and 2 (lr 0: always the initial model), equals one process's.
    reference = _single_process_online(world)
    assert set(reference) >= {"online/overall", "online/ShapeCls", "online/ShapeT2I", "online/ShapeDocs"}
    for rank in ranks:
        assert [p["step"] for p in rank["curve"]] == [0, 1, 2]
        for point in rank["curve"]:
            for key, value in reference.items():
                assert point[key] == pytest.approx(value, abs=1e-9), (point["step"], key)
    written = read_curve(out / "online_eval" / "curve.csv")
    assert [p["step"] for p in written] == [0, 1, 2]
    assert written[-1]["online/overall"] == pytest.approx(reference["online/overall"], abs=1e-6)


def test_gradcache_with_sub_batch_chunks_equals_the_plain_step(tmp_path, world):
    runs = {}
    for chunk in (None, mixture_probe.SUB_BATCH):
        out = tmp_path / f"chunk{chunk}"
        mixture_probe.run(out, world, devices=1, chunk=chunk, max_steps=1, online=False)
        runs[chunk] = torch.load(out / "rank0.pt")
    plain, cached = runs[None], runs[mixture_probe.SUB_BATCH]
    assert plain["ids"][0] == cached["ids"][0]  # the same batch of same-source sub-batches
    assert set(plain["grads"]) == set(cached["grads"]) and plain["grads"]
    for name, grad in plain["grads"].items():
        torch.testing.assert_close(cached["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
