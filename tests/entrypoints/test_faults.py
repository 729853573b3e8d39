"""Fault injection: a user's bad day never ends in a wrong result, a lost run or a silent overwrite.

Each test provokes one fault on the tiny model (in-process, a few steps) and checks the promised outcome:
a signal saves a checkpoint at the current step and exits non-zero (SIGINT, and SIGUSR2 handed to a
submitit-style requeue handler after the save); a run that would make no optimizer step, or whose config
values have the wrong type, is refused before any work; one run directory holds one live run; an
unreadable last checkpoint is named and skipped for the previous one; temporary files of killed saves are
removed; files respect the umask; images over the size limit or of extreme aspect ratio are named by file,
row and field. (SIGTERM end to end, and resume, are in test_resume.py.)"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

from embedders.checkpoint_io import (
    AtomicCheckpointIO,
    UnreadableCheckpointError,
    atomic_torch_save,
    clean_orphans,
)
from operations.config_types import ConfigTypeError
from operations.interrupt import RunInterrupted
from operations.lock import RunLock, RunLockedError
from training import job as train

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["evaluate_before=false", "evaluate_after=false", "save_embedder=false", "trainer.max_steps=6",
         "trainer.val_check_interval=100", "callbacks.model_checkpoint.every_n_train_steps=2", "~callbacks.similarity"]


def signal_at(step: int, name: str, times: int = 1) -> list[str]:
    return ["+callbacks.signal._target_=fault_probes.SignalAt", f"+callbacks.signal.step={step}",
            f"+callbacks.signal.signal={name}", f"+callbacks.signal.times={times}"]


@pytest.fixture(autouse=True)
def probes_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=True, mmap=True)["global_step"]


def test_ctrl_c_saves_the_current_step_and_exits_130(compose_cfg, tiny_cfg, tmp_path):
    cfg = compose_cfg("train", tiny_cfg([*QUICK, *signal_at(3, "SIGINT")]))
    # What the process had before (Python's default handler, or SIG_IGN when a non-interactive shell started it
    # in the background): the run must put back exactly that.
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as err:
        train.run(cfg)
    assert err.value.exit_code == 130  # 128 + SIGINT
    assert "Stopped by SIGINT at step 4: checkpoint saved to" in err.value.message
    assert "Resume with:\n  python train.py resume=" in err.value.message
    assert step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == 4  # the step it was on, not the periodic 2
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


def test_second_ctrl_c_stops_at_once_without_saving(compose_cfg, tiny_cfg, tmp_path):
    cfg = compose_cfg("train", tiny_cfg([*QUICK, *signal_at(3, "SIGINT", times=2)]))
    with pytest.raises(SystemExit) as err:  # Lightning's KeyboardInterrupt handling: exit status 1
        train.run(cfg)
    assert err.value.code == 1
    assert step_of(tmp_path / "run" / "checkpoints" / "last.ckpt") == 2  # only the periodic checkpoint


def test_usr2_under_submitit_saves_then_hands_over_to_its_requeue(compose_cfg, tiny_cfg, tmp_path):
    """submitit's SIGUSR2 handler requeues the job and exits; the step must be saved before it runs."""
    seen = []

    def submitit_like_handler(signum, frame):  # what submitit's checkpoint_and_try_requeue does, minus scontrol
        seen.append(step_of(tmp_path / "run" / "checkpoints" / "last.ckpt"))
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_like_handler)
    try:
        with pytest.raises(SystemExit) as err:
            train.run(compose_cfg("train", tiny_cfg([*QUICK, *signal_at(2, "SIGUSR2")])))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert err.value.code == -1 and seen == [3]  # requeued once, after the checkpoint of step 3 was written


def test_a_run_without_optimizer_steps_is_refused_before_any_work(compose_cfg, tiny_cfg, tmp_path):
    cfg = compose_cfg("train", tiny_cfg(["data.batch_size=1000", "data.val_batch_size=8"]))
    with pytest.raises(train.RefusedToStart, match=r"no optimizer step: 280 training pairs .* data.batch_size=1000 "
                                                    r"with data.drop_last=True .* 0 batch\(es\) per epoch"):
        train.run(cfg)
    assert not (tmp_path / "run" / "eval_untrained").exists()  # the untrained evaluation never ran
    with pytest.raises(train.RefusedToStart, match="trainer.max_steps=0"):
        train.run(compose_cfg("train", tiny_cfg(["trainer.max_steps=0"])))


def test_wrong_value_types_are_refused_before_the_untrained_evaluation(compose_cfg, tiny_cfg, tmp_path):
    cfg = compose_cfg("train", tiny_cfg(["model.optimizer.lr='1e-3'", "loss.temperature=hot",
                                         "data.batch_size=8.5", "+loss.alpah=3"]))
    with pytest.raises(ConfigTypeError) as err:
        train.run(cfg)
    message = str(err.value)
    assert "model.optimizer.lr must be float or Tensor (torch.optim.AdamW's `lr`), got '1e-3' (a string)" in message
    assert "loss.temperature must be float" in message and "data.batch_size must be int" in message
    assert "loss.alpah: losses.InfoNCE takes no parameter 'alpah'" in message
    assert not (tmp_path / "run" / "eval_untrained").exists()


def test_one_live_run_per_directory_and_a_stale_lock_is_taken_over(tmp_path, caplog):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from operations.lock import RunLock
        RunLock({str(run)!r}).acquire()
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=f"in use by another run: PID {holder.pid} on host "
                                                 f"{socket.gethostname()}"):
            RunLock(run).acquire()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: its lock is stale and is taken over, with a warning naming it.
    with caplog.at_level(logging.WARNING, logger="operations.lock"), RunLock(run):
        pass
    assert f"taking over the lock left by PID {holder.pid}" in caplog.text



def test_unreadable_last_checkpoint_is_named_and_skipped(compose_cfg, tiny_cfg, tmp_path, caplog):
    from omegaconf import OmegaConf

    cfg = compose_cfg("train", tiny_cfg())
    model = OmegaConf.to_container(cfg.model, resolve=True)
    ckpts = tmp_path / "run" / "checkpoints"
    io = AtomicCheckpointIO(keep_previous=True)
    io.save_checkpoint({"global_step": 2, "hyper_parameters": model}, ckpts / "last.ckpt")
    io.save_checkpoint({"global_step": 4, "hyper_parameters": model}, ckpts / "last.ckpt")
    assert step_of(ckpts / "last.prev.ckpt") == 2  # the save before the newest is kept
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])  # truncated, e.g. by an interrupted copy
    with caplog.at_level(logging.WARNING, logger="embedlab.train"):
        chosen = train.resolve_ckpt_path(cfg, tmp_path / "run")
    assert chosen == str(ckpts / "last.prev.ckpt")
    assert f"checkpoint {ckpts / 'last.ckpt'} cannot be read: it is truncated or corrupt" in caplog.text
    assert "resuming from" in caplog.text and "(step 2) instead" in caplog.text
    (ckpts / "last.prev.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(UnreadableCheckpointError, match="no readable checkpoint"):
        train.resolve_ckpt_path(cfg, tmp_path / "run")  # never a silent restart from scratch


def test_orphan_temp_files_are_removed_and_files_respect_the_umask(tmp_path):
    from datamodules.samplers import write_cluster_file
    from operations.atomic import swap_in_directory

    (tmp_path / ".last.ckpt.k3j2x9.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".keep.me").write_text("not ours")
    assert [p.name for p in clean_orphans(tmp_path)] == [".last.ckpt.k3j2x9.tmp"]
    assert (tmp_path / ".keep.me").exists()
    old = os.umask(0o027)
    try:
        atomic_torch_save({"x": 1}, tmp_path / "a.ckpt")
        write_cluster_file(tmp_path / "S.saha.json", {"format": "x"}, [[0, 1]], 1, {})
        built = tmp_path / "built"
        built.mkdir(mode=0o700)
        swap_in_directory(built, tmp_path / "tree")
    finally:
        os.umask(old)
    assert oct((tmp_path / "a.ckpt").stat().st_mode & 0o777) == oct(0o640)  # mkstemp alone gives 0o600
    assert oct((tmp_path / "S.saha.json").stat().st_mode & 0o777) == oct(0o640)
    assert oct((tmp_path / "tree").stat().st_mode & 0o777) == oct(0o750)


def test_image_over_the_size_limit_is_named(tmp_path):
    from datamodules.errors import DataError
    from datamodules.images import ImageLoader, set_max_image_pixels

    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    before = Image.MAX_IMAGE_PIXELS
    try:
        set_max_image_pixels(1000)  # image_max_pixels=1000
        with pytest.raises(DataError) as err:
            ImageLoader(tmp_path).load("big.png", "ShapeCls", 7, "qry_image_path")
        assert str(err.value).startswith("dataset 'ShapeCls', row 7, field 'qry_image_path': image file ")
        assert "big.png is larger than the image_max_pixels limit (1000 pixels" in str(err.value)
        set_max_image_pixels(None)  # no limit
        assert ImageLoader(tmp_path).load("big.png").size == (40, 30)
    finally:
        Image.MAX_IMAGE_PIXELS = before


def test_extreme_aspect_ratio_names_the_row_not_the_batch(tmp_path):
    from datamodules.collate import PairCollator
    from datamodules.errors import DataError
    from datamodules.images import ImageLoader
    from datamodules.schema import Item, TrainPair
    from embedders import Embedder

    embedder = Embedder.build(family="qwen2_vl", config={"text": {"hidden_size": 32, "intermediate_size": 64,
                              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1},
                              "vision": {"depth": 1, "embed_dim": 32, "num_heads": 2}},
                              image={"min_pixels": 3136, "max_pixels": 3136})
    Image.new("RGB", (56, 56)).save(tmp_path / "ok.png")
    Image.new("RGB", (2000, 8)).save(tmp_path / "strip.png")  # 250:1, beyond Qwen2-VL's 200:1
    pairs = [TrainPair("ShapeI2T", row, Item("<|image_1|> a picture", image), Item("a caption"))
             for row, image in ((3, "ok.png"), (4, "strip.png"), (5, "ok.png"))]
    collate = PairCollator(embedder.input_builder, ImageLoader(tmp_path))
    with pytest.raises(DataError) as err:
        collate(pairs)
    message = str(err.value)
    assert message.startswith("dataset 'ShapeI2T', row 4, field 'qry_image_path': cannot build model inputs from "
                              f"its image {tmp_path / 'strip.png'} (2000x8 px)")
    assert "aspect ratio" in message
