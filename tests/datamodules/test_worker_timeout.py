"""A training or validation DataLoader worker that never delivers stops the run with an error that says what to do,
its workers stopped (killed where SIGTERM does not end them), instead of hanging it; a worker's own error and the
single-process loaders are unchanged."""

from __future__ import annotations

import multiprocessing
import signal
import time

import pyarrow as pa
import pytest
import torch
from torch.utils.data import Dataset

from datamodules import MMEBDataModule
from datamodules import datamodule as dm


class StuckInWorkers(Dataset):
    """Like a child deadlocked in CPython's after-fork clean-up: in a worker it never returns, and SIGTERM (torch's
    terminate at shutdown) does not end it; in the main process it is a plain dataset."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(3600)
        return torch.tensor([i])


class RaisesInWorkers(StuckInWorkers):
    def __getitem__(self, i):
        raise RuntimeError("reading row 3: connection timed out")


def _new_children(before: set[int]) -> list:
    return [p for p in multiprocessing.active_children() if p.pid not in before]


@pytest.mark.parametrize("loader", ["training", "validation"])
def test_a_stuck_worker_stops_the_run_with_what_to_do_and_no_live_worker(loader):
    before = {p.pid for p in multiprocessing.active_children()}
    if loader == "training":
        data = dm.ResumableDataLoader(StuckInWorkers(), batch_size=2, num_workers=1, persistent_workers=True,
                                      timeout=dm._worker_timeout(1, 2.0), generator=torch.Generator().manual_seed(0))
    else:
        data = dm.ValidationDataLoader(StuckInWorkers(), batch_size=2, num_workers=1, timeout=dm._worker_timeout(1, 2.0))
    start = time.perf_counter()
    with pytest.raises(dm.WorkerTimeoutError, match=rf"^{loader}: the DataLoader's 1 worker\(s\) gave no batch in 2 s"
                                                     r".*train\.py resume=.*data\.num_workers=0"):
        next(iter(data))
    assert time.perf_counter() - start < 60
    assert not _new_children(before), "the worker ignored SIGTERM: it must have been killed"


def test_a_workers_own_error_passes_through_unchanged():
    """Only torch's own time-out is turned into the stop: a worker's RuntimeError that mentions one is the user's."""
    data = dm.ResumableDataLoader(RaisesInWorkers(), batch_size=2, num_workers=1, persistent_workers=True,
                                  timeout=dm._worker_timeout(1, 2.0))
    with pytest.raises(RuntimeError, match="reading row 3: connection timed out") as err:
        next(iter(data))
    assert not isinstance(err.value, dm.WorkerTimeoutError)


class StuckFromItem4(StuckInWorkers):
    """Delivers items 0–3, then never returns (in a worker)."""

    def __getitem__(self, i):
        if i >= 4:
            return super().__getitem__(i)
        return torch.tensor([i])


def test_the_wrapped_iterator_is_the_loaders_own_in_everything_else():
    data = dm.ResumableDataLoader(torch.arange(8), batch_size=2, num_workers=1, persistent_workers=True,
                                  timeout=dm._worker_timeout(1, 2.0))
    it = iter(data)
    pids = [w.pid for w in data._iterator._workers]
    assert len(it) == 4 and [b.tolist() for b in it] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [b.tolist() for b in data] == [[0, 1], [2, 3], [4, 5], [6, 7]]   # a second epoch ...
    assert [w.pid for w in data._iterator._workers] == pids                 # ... from the same persistent workers
    data._iterator._shutdown_workers()


def test_a_worker_stuck_when_a_new_epoch_starts_is_stopped_too():
    """With persistent workers a new epoch waits inside the DataLoader's own __iter__ for every worker to take up
    the epoch (after what it was still fetching for the last one); a worker stuck there is stopped the same way."""
    before = {p.pid for p in multiprocessing.active_children()}
    data = dm.ResumableDataLoader(StuckFromItem4(), batch_size=2, num_workers=1, persistent_workers=True,
                                  timeout=dm._worker_timeout(1, 2.0))
    assert next(iter(data)).tolist() == [[0], [1]]   # the worker goes on to fetch ahead: items 2, 3, then 4 (stuck)
    with pytest.raises(dm.WorkerTimeoutError, match=r"^training: the DataLoader's 1 worker\(s\) gave no batch in 2 s"):
        iter(data)   # the next epoch, cut short as max_steps or a resume would
    assert not _new_children(before)


def test_the_datamodules_loaders_wait_with_workers_only(tmp_path, write_repo):
    """With workers both loaders wait `data.worker_timeout_s` (600 s by default); without, no time-out (torch's
    single-process iterator allows none); a time-out that could not end the wait is refused by name."""
    rows = 12
    table = pa.table({"qry": [f"query {i}" for i in range(rows)], "qry_image_path": [""] * rows,
                      "pos_text": [f"target {i}" for i in range(rows)], "pos_image_path": [""] * rows,
                      "neg_text": [""] * rows, "neg_image_path": [""] * rows})
    repo = write_repo(tmp_path / "repo", {"A": {"original": table}})
    kw = dict(image_root=str(tmp_path), batch_size=2, val_per_subset=4, val_batch_size=2, use_hard_negatives=False)
    for workers, extra, timeout in ((1, {}, 600.0), (1, {"worker_timeout_s": 42}, 42.0), (0, {}, 0)):
        data = MMEBDataModule(str(repo), ["A"], num_workers=workers, **kw, **extra)
        data.set_input_builder(lambda *a, **k: {})
        data.setup("fit")
        assert data.train_dataloader().timeout == timeout and data.val_dataloader().timeout == timeout
    for bad in (0, -5, float("inf"), float("nan"), 1e8, True, "600"):
        with pytest.raises(ValueError, match="data.worker_timeout_s must be a positive number of seconds"):
            MMEBDataModule(str(repo), ["A"], num_workers=1, worker_timeout_s=bad, **kw)


def test_stopping_through_the_wrapper_stops_torchs_iterator():
    """`stop_workers` given the deadline wrapper acts on torch's iterator inside it (once: a second stop is a no-op)."""
    from datamodules.workers import stop_workers

    before = {p.pid for p in multiprocessing.active_children()}
    data = dm.ResumableDataLoader(torch.arange(8), batch_size=2, num_workers=1, persistent_workers=True,
                                  timeout=dm._worker_timeout(1, 30.0))
    it = iter(data)
    assert next(it).tolist() == [0, 1] and _new_children(before)
    stop_workers(it)
    stop_workers(it)
    stop_workers(None)
    assert not _new_children(before) and data._iterator._shutdown


def test_a_resume_may_change_how_batches_are_read_but_not_what_they_hold():
    """The stop message's advice (`data.num_workers=0`, a longer `data.worker_timeout_s`) is a resume the run
    accepts; the batches themselves (size, subsets, …) stay protected."""
    from operations.record import Change

    for key in ("data.num_workers", "data.pin_memory", "data.worker_timeout_s"):
        assert not Change(key, 2, 0).protected
    for key in ("data.batch_size", "data.subsets", "data.max_tokens_per_batch", "loss.alpha", "seed"):
        assert Change(key, 1, 2).protected
