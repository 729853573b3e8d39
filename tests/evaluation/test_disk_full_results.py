"""A full disk while evaluation writes its results (issue 22: `OSError: [Errno 28]` named no file): the error names
the file, the space it needs and the space free, the files of an earlier evaluation stay intact, and evaluate.py
exits 1 with that message alone. The full disk is simulated at the write (`os.fdopen`'s file refuses it with ENOSPC)
and `shutil.disk_usage` reports what is free. (Checkpoints: tests/entrypoints/test_disk_full.py.)"""

from __future__ import annotations

import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from operations.disk_space import DiskFullError

Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def little_free_space(monkeypatch):
    """`shutil.disk_usage` reports 1.5 MB free (what a full disk with a little left looks like)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1_500_000, 1_500_000))


class _FullDiskFile:
    """A file opened for writing on a full disk: the write fails with ENOSPC, as the kernel reports it."""

    def __init__(self, real):
        self.real = real

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.real.close()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_while_writing_results_names_the_file_and_keeps_the_earlier_one(fake_embedder, tmp_path,
                                                                                  monkeypatch, little_free_space):
    from datamodules.schema import EvalRow, Item
    from evaluation.engine import EvalDataset
    from evaluation.runner import score
    from evaluation.store import atomic_write

    suite = [EvalDataset("A", "Retrieval", "IND", [EvalRow("A", i, Item(f"q{i}"), (Item(f"c{i}"), Item("x")))
                                                   for i in range(3)])]
    score(fake_embedder(), suite, {}, "m", tmp_path)  # an earlier evaluation's files
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **kw: _FullDiskFile(real_fdopen(fd, *a, **kw)))
    target = tmp_path / "results.json"
    with pytest.raises(DiskFullError) as err:
        atomic_write(target, "x" * 2_000_000)
    assert str(err.value).startswith(f"disk full while writing the result file {target} (it needs about 2.0 MB; "
                                     f"1.5 MB is free in {tmp_path}; OSError: [Errno 28] No space left on device)")
    # The whole evaluation on the full disk: the dataset's score file is named in its failure, writing results.json
    # stops the run, and every file of the earlier evaluation is as it was.
    with pytest.raises(DiskFullError, match=rf"disk full while writing the result file {tmp_path}/results\.json"):
        score(fake_embedder(), suite, {"resume": False, "tie_rule": "strict"}, "m", tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temporary file either


def test_evaluate_exits_1_on_a_full_disk(compose_cfg, tmp_path, monkeypatch, capsys):
    from evaluation import job
    from operations.disk_space import disk_full_error

    cfg = compose_cfg("evaluate", ["device=cpu"])

    def full(cfg):
        raise disk_full_error(Path(cfg.paths.output_dir) / "results.json", 2_000, OSError(errno.ENOSPC, "No space"),
                              "result file")

    monkeypatch.setattr(job, "run", full)
    with pytest.raises(SystemExit) as exited:
        job.evaluate_in_run_dir(cfg)
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert f"error: disk full while writing the result file {tmp_path / 'run' / 'results.json'}" in err
    assert "Traceback" not in err
