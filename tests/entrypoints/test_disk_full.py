"""A full disk while checkpointing (issue 22: torch's `RuntimeError: [enforce fail at inline_container.cc:672]`
named no file): the error names the checkpoint, the space it needs and the space free; the earlier checkpoints stay
intact; train.py exits 1 with that message and the resume command. The full disk is simulated where the bytes are
written (torch.save fails as its stream writer does) and `shutil.disk_usage` reports what is free. (Evaluation
results: tests/evaluation/test_disk_full_results.py.)"""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest
import torch

from embedders.checkpoint_io import AtomicCheckpointIO
from operations.disk_space import DiskFullError

TORCH_ENOSPC = ("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/3: file "
                "write failed")
Usage = namedtuple("Usage", "total used free")


@pytest.fixture
def little_free_space(monkeypatch):
    """`shutil.disk_usage` reports 1.5 MB free (what a full disk with a little left looks like)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 1_500_000, 1_500_000))


def test_disk_full_while_checkpointing_names_the_file_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch,
                                                                                        little_free_space):
    io = AtomicCheckpointIO(keep_previous=True)
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 2, "w": torch.ones(4)}, path)
    io.save_checkpoint({"global_step": 4, "w": torch.ones(4)}, path)

    def full_disk(obj, f, *args, **kwargs):  # torch.save's stream writer on a full disk
        f.write(b"the first bytes of the checkpoint")
        raise RuntimeError(TORCH_ENOSPC)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(DiskFullError) as err:
        io.save_checkpoint({"global_step": 6, "w": torch.zeros(1_000_000)}, path)  # 4 MB of weights
    monkeypatch.undo()
    message = str(err.value)
    assert message.startswith(f"disk full while writing the checkpoint {path} (it needs about 4.0 MB; 1.5 MB is "
                              f"free in {path.parent}; RuntimeError: [enforce fail at inline_container.cc:672]")
    assert "Free at least 2.5 MB there, or write to another disk; the files written before are intact" in message
    assert err.value.errno == errno.ENOSPC
    assert torch.load(path)["global_step"] == 4 and torch.load(path.with_name("last.prev.ckpt"))["global_step"] == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt", "last.prev.ckpt"]  # no temporary file


def test_disk_full_during_training_exits_1_naming_the_checkpoint(compose_cfg, tiny_cfg, tmp_path, monkeypatch,
                                                                 little_free_space, capsys):
    """train.py's job: the fit stops at the failed save with exit 1, the message names last.ckpt (not Lightning's
    traceback), says how to resume, and the periodic checkpoint before it is intact."""
    from training.job import train_in_run_dir

    cfg = compose_cfg("train", tiny_cfg(["evaluate_before=false", "evaluate_after=false", "save_embedder=false",
                                         "trainer.max_steps=4", "trainer.val_check_interval=100",
                                         "callbacks.model_checkpoint.every_n_train_steps=2", "~callbacks.similarity"]))
    real_save = torch.save
    saves = []

    def full_after_the_first(obj, f, *args, **kwargs):
        saves.append(obj.get("global_step"))
        if len(saves) > 1:
            raise RuntimeError(TORCH_ENOSPC)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_the_first)
    with pytest.raises(SystemExit) as exited:
        train_in_run_dir(cfg)
    monkeypatch.undo()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert f"error: disk full while writing the checkpoint {ckpt} (it needs about " in err
    assert "1.5 MB is free" in err and "Resume with:\n  python train.py resume=" in err
    assert "Traceback" not in err
    assert saves == [2, 4] and torch.load(ckpt, weights_only=True, mmap=True)["global_step"] == 2
