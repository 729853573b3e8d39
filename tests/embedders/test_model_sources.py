"""Where a model is loaded from, refused before loading with the file and what to do (issue 22): a damaged saved
Embedder (invalid embedder.json, a config.json that does not fit the weights, half a model.safetensors, no
tokenizer.json), a run directory given as the saved Embedder ("did you mean <run>/embedder"), a model.path that is
neither a directory nor a hub id, or a hub id missing from the cache while offline; and a saved Embedder's files
get the mode an ordinary write gives under the umask."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from embedders import Embedder
from embedders.source_checks import ModelSourceError, check_model_path

TINY = {"text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 1}, "vision": {"depth": 1, "embed_dim": 32, "num_heads": 2}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory as training leaves it: checkpoints/last.ckpt and embedder/ (a tiny Qwen2-VL, saved)."""
    run = tmp_path_factory.mktemp("sources") / "2026-01-01_00-00-00_tiny"
    torch.manual_seed(0)
    Embedder.build("qwen2_vl", config=TINY, image={"min_pixels": 3136, "max_pixels": 3136}).save_pretrained(
        run / "embedder")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"a checkpoint")
    return run


def damaged(run_dir: Path, tmp_path: Path, damage) -> Path:
    """A copy of the saved Embedder as <tmp>/run/embedder (with the run's checkpoint beside it), damaged."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    damage(copy / "embedder")
    return copy / "embedder"


def _edit_config(key: str, value):
    def edit(d: Path):
        config = json.loads((d / "config.json").read_text())
        config["text_config"][key] = value
        config["text_config"].pop("layer_types", None)
        (d / "config.json").write_text(json.dumps(config))
    return edit


def _cut(name: str):
    def cut(d: Path):
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
    return cut


@pytest.mark.parametrize("damage, file, says", [
    (lambda d: (d / "embedder.json").write_text('{"family": '), "embedder.json", r"is not valid JSON \(Expecting value"),
    (_edit_config("hidden_size", 64), "config.json",
     r"does not match the weights in .*model\.safetensors \(RuntimeError: .*ignore_mismatched_sizes"),
    (_edit_config("num_attention_heads", 3), "config.json", r"is not a valid model config \(ValueError: hidden_size"),
    (_edit_config("hidden_size", "big"), "config.json",
     r"is not a valid model config \(StrictDataclassFieldValidationError: .*'hidden_size'"),
    # One layer more than the weights hold: transformers would fill it with random numbers and only log it.
    (_edit_config("num_hidden_layers", 2), "config.json",
     r"does not match the weights in .*model\.safetensors: the model it describes has [\d,]+ parameters, the "
     r"weights hold [\d,]+ values"),
    (_cut("model.safetensors"), "model.safetensors", r"is incomplete: \d+ of its \d+ bytes are there"),
    (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json", r"is missing \(and no other tokenizer file"),
], ids=["invalid-embedder-json", "config-sizes", "config-invalid", "config-type", "config-more-layers",
        "half-safetensors", "no-tokenizer"])
def test_a_damaged_saved_embedder_names_the_file_and_what_to_do(run_dir, tmp_path, damage, file, says):
    directory = damaged(run_dir, tmp_path, damage)
    with pytest.raises(ModelSourceError) as err:
        Embedder.from_pretrained(directory)
    message = str(err.value)
    assert message.startswith(str(directory / file)) or f"{directory / file} " in message, message
    assert re.search(says, message), message
    # What to do: write it again from the run's checkpoint, with the command spelled out.
    assert (f"python export.py {directory.parent / 'checkpoints' / 'last.ckpt'} {directory} --overwrite"
            in message), message


def test_a_run_directory_given_as_the_embedder_says_did_you_mean(run_dir, tmp_path):
    with pytest.raises(ModelSourceError, match=rf"{run_dir} is a run directory, not a saved Embedder: did you mean "
                                               rf"{run_dir / 'embedder'}\?"):
        Embedder.from_pretrained(run_dir)
    no_embedder = tmp_path / "run"  # save_embedder=false: the checkpoint is what there is to score
    (no_embedder / "checkpoints").mkdir(parents=True)
    (no_embedder / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match=rf"without a saved Embedder .* ckpt_path={no_embedder}/checkpoints/"
                                               r"last\.ckpt"):
        Embedder.from_pretrained(no_embedder)
    with pytest.raises(ModelSourceError, match=rf"{tmp_path / 'nowhere'} does not exist"):
        Embedder.from_pretrained(tmp_path / "nowhere")


def test_evaluate_refuses_a_run_directory_as_embedder_dir_with_exit_2(compose_cfg, run_dir, tmp_path, capsys):
    """The command: refused before any model is loaded, exit 2, the message alone (no traceback), no run directory
    left behind (it held only what Hydra writes)."""
    from hydra.core.hydra_config import HydraConfig

    from evaluation import job

    cfg = compose_cfg("evaluate", [f"embedder_dir={run_dir}", "device=cpu"])
    out = tmp_path / "run"
    (out / ".hydra").mkdir(parents=True)  # what Hydra writes before the job starts: its config record and log
    (out / f"{HydraConfig.get().job.name}.log").write_text("")
    with pytest.raises(SystemExit) as exited:
        job.evaluate_in_run_dir(cfg)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {run_dir} is a run directory, not a saved Embedder: did you mean {run_dir / 'embedder'}?" in err
    assert "Traceback" not in err and not out.exists()


@pytest.mark.parametrize("path, says", [
    ("/nonexistent/models/qwen", r"model\.path=/nonexistent/models/qwen: no such directory .* and not a hub id"),
    ("logs/train/runs/x/embedder", r"no such directory .*logs/train/runs/x/embedder\), and not a hub id"),
    ("not a hub id!", r"no such directory .* and not a hub id"),
])
def test_a_model_path_that_is_neither_a_directory_nor_a_hub_id_is_refused_at_once(path, says, monkeypatch):
    from embedders.backbones import get_family

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(type(get_family("qwen2_vl")), "load_model", never)
    start = time.perf_counter()
    with pytest.raises(ModelSourceError, match=says):
        Embedder.build("qwen2_vl", path=path)
    assert time.perf_counter() - start < 5  # huggingface_hub's repo-id error came after ~30-60 s of retries


def test_a_file_or_an_uncached_hub_id_while_offline_is_named(tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelSourceError, match=r"is a file; it must be a model directory"):
        check_model_path(tmp_path / "model.safetensors")
    check_model_path(tmp_path)  # an existing directory passes (its files are transformers' to read)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelSourceError, match=r"model\.path=Qwen/Qwen2-VL-2B-Instruct is a hub id, but the model is "
                                               r"not in the local Hugging Face cache .*HF_HUB_OFFLINE=1"):
        check_model_path("Qwen/Qwen2-VL-2B-Instruct")
    # Cached: passes offline.
    snapshot = tmp_path / "empty-cache" / "models--org--cached" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    check_model_path("org/cached")


def test_evaluate_refuses_a_bad_model_path_with_exit_2(compose_cfg, tmp_path, capsys):
    from evaluation import job

    cfg = compose_cfg("evaluate", ["model.path=/nonexistent/qwen", "model.config=null", "device=cpu"])
    with pytest.raises(SystemExit) as exited:
        job.evaluate_in_run_dir(cfg)
    assert exited.value.code == 2
    assert "error: model.path=/nonexistent/qwen: no such directory" in capsys.readouterr().err


def test_saved_files_get_the_mode_of_an_ordinary_write(run_dir, tmp_path):
    """transformers writes model.safetensors through a temporary file (mode 0600); under umask 022 every file of a
    saved Embedder must be 0644 and every directory 0755, as `open()` and `mkdir()` give."""
    old = os.umask(0o022)
    try:
        Embedder.from_pretrained(run_dir / "embedder").save_pretrained(tmp_path / "saved")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path / "saved")): oct(p.stat().st_mode & 0o777)
             for p in (tmp_path / "saved").rglob("*")}
    assert modes["model.safetensors"] == oct(0o644)
    assert {m for n, m in modes.items() if (tmp_path / "saved" / n).is_file()} == {oct(0o644)}, modes
    assert {m for n, m in modes.items() if (tmp_path / "saved" / n).is_dir()} == {oct(0o755)}, modes


def test_train_refuses_a_bad_model_path_with_exit_2_before_training(compose_cfg, tiny_cfg, tmp_path, capsys):
    from training.job import train_in_run_dir

    cfg = compose_cfg("train", tiny_cfg(["model.path=/nonexistent/qwen", "model.config=null"]))
    with pytest.raises(SystemExit) as exited:
        train_in_run_dir(cfg)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error: model.path=/nonexistent/qwen: no such directory" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
