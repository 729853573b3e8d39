"""A training run's record on its model card: what train.py writes after the final evaluation and what export.py
reads back from a checkpoint's run directory."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from embedders.checkpoint_io import checkpoint_metadata
from embedders.saving import EMBEDDER_FILE
from operations.record import lenient_container, load_run_config

from .model_card import write_model_card


def training_record(cfg: Mapping, steps: int | None = None) -> dict:
    """The parts of a run's (resolved) config that describe how the model was trained, for the card."""
    model = dict(cfg.get("model") or {})
    keep_model = ("family", "path", "lora", "freeze_vision", "gradient_checkpointing", "dtype", "pooling", "normalize",
                  "max_length", "image", "gradcache", "optimizer", "scheduler", "temperature_lr")
    data = dict(cfg.get("data") or {})
    keep_data = ("source", "subsets", "split", "max_per_subset", "use_hard_negatives", "max_negatives_per_pair",
                 "batch_size", "bundled")
    trainer = dict(cfg.get("trainer") or {})
    keep_trainer = ("max_steps", "max_epochs", "precision", "devices", "num_nodes", "accumulate_grad_batches",
                    "gradient_clip_val")
    eval_data = dict(cfg.get("eval_data") or {})
    record = {
        "model": {k: model[k] for k in keep_model if k in model},
        "loss": dict(cfg.get("loss") or {}),
        "prompt": dict(cfg.get("prompt") or {}),
        "data": {k: data[k] for k in keep_data if k in data},
        "sampler": dict(cfg.get("sampler") or {}),
        "trainer": {k: trainer[k] for k in keep_trainer if k in trainer},
        "seed": cfg.get("seed"),
        "eval_data": {"source": eval_data.get("source"), "bundled": bool(eval_data.get("bundled")),
                      "datasets": list(eval_data.get("datasets") or [])} if eval_data else {},
    }
    if record["data"].get("bundled"):
        record["data"]["bundled"] = True
    if steps is not None:
        record["steps"] = int(steps)
    return record


def write_run_card(run_dir: str | Path, cfg) -> Path | None:
    """train.py's call after the final evaluation: rewrite `<run_dir>/embedder/README.md` with the run's training
    record and the MMEB table of `<run_dir>/eval/results.json` (no-op when no Embedder was saved)."""
    run_dir = Path(run_dir)
    embedder_dir = run_dir / "embedder"
    if not (embedder_dir / EMBEDDER_FILE).is_file():
        return None
    return write_model_card(embedder_dir, training=training_record(lenient_container(cfg), _run_steps(run_dir)),
                            results=_read_results(run_dir))


def _read_results(run_dir: Path) -> dict | None:
    path = run_dir / "eval" / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _run_steps(run_dir: Path, checkpoint: str | Path | None = None) -> int | None:
    checkpoint = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        return None
    try:
        return int(checkpoint_metadata(checkpoint).get("global_step"))
    except (TypeError, ValueError, OSError):
        return None


def run_dir_of_checkpoint(checkpoint: str | Path) -> Path | None:
    """`<run>/checkpoints/x.ckpt` → `<run>` when it holds the run's Hydra config."""
    run_dir = Path(checkpoint).resolve().parent.parent
    return run_dir if (run_dir / ".hydra" / "config.yaml").is_file() else None


def card_inputs_for_checkpoint(checkpoint: str | Path, run_dir: str | Path | None = None,
                               results: str | Path | None = None) -> tuple[dict | None, dict | None]:
    """(training record, MMEB results) for export.py: from the checkpoint's run directory (its `.hydra/config.yaml`,
    `eval/results.json`) unless given; the step count comes from the checkpoint itself."""

    run_dir = Path(run_dir) if run_dir else run_dir_of_checkpoint(checkpoint)
    training = None
    if run_dir is not None and (run_dir / ".hydra" / "config.yaml").is_file():
        cfg = lenient_container(load_run_config(run_dir))
        training = training_record(cfg, _run_steps(run_dir, checkpoint))
    result_dict = None
    if results is not None:
        result_dict = json.loads(Path(results).read_text())
    elif run_dir is not None:
        result_dict = _read_results(run_dir)
    return training, result_dict


