"""Exporting a training checkpoint as a standalone, shippable Embedder directory (LoRA merged), with the model card
of its run and, optionally, a Hub upload: what `python export.py` runs."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from embedders.checkpoint_io import load_trained_module
from embedders.dtypes import resolve_dtype
from operations.atomic import swap_in_directory

from .hub import hub_token, push_to_hub
from .model_card import write_model_card
from .run_card import card_inputs_for_checkpoint


class ExportRefused(ValueError):
    """An export that would mix its files with another directory's contents."""


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out_dir` unless `overwrite` (then it is replaced as a whole: no foreign file stays)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportRefused(f"{out_dir} exists and is not a directory; choose another output directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        names = sorted(p.name for p in out_dir.iterdir())
        shown = ", ".join(names[:5]) + (f", … ({len(names)} entries)" if len(names) > 5 else "")
        raise ExportRefused(f"{out_dir} is not empty ({shown}): an export would mix its files with these. Choose an "
                            "empty or new directory, or pass --overwrite to replace the whole directory")


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None,
                      truncate_dim: int | None = None, license: str | None = None, run_dir: str | Path | None = None,
                      results: str | Path | None = None, push_to_hub_repo: str | None = None, private: bool = False,
                      overwrite: bool = False) -> Path:
    """Write the checkpoint's Embedder to `out_dir` (built beside it, then swapped in whole) with its run's card."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, overwrite)
    if push_to_hub_repo:
        hub_token(push_to_hub_repo)  # refuse (no token, bad repo id) before the export and before any network call
    module = load_trained_module(checkpoint)
    if module.hparams.lora:
        base = (f"model.path={module.hparams.path}" if module.hparams.path
                else "the checkpoint itself (random init from model.config)")
        print(f"LoRA checkpoint: the adapters come from {checkpoint}, the frozen base weights from {base}; "
              "merged into the export")
    embedder = module.embedder.truncated(truncate_dim)
    if dtype is not None:
        embedder = embedder.to(resolve_dtype(dtype))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.export-", dir=out_dir.parent))
    try:
        embedder.save_pretrained(built)
        training, result_dict = card_inputs_for_checkpoint(checkpoint, run_dir, results)
        write_model_card(built, training=training, results=result_dict, license=license, model_id=push_to_hub_repo,
                         final_directory=out_dir)
        swap_in_directory(built, out_dir)
    finally:
        if built.exists():
            shutil.rmtree(built, ignore_errors=True)
    if push_to_hub_repo:
        url = push_to_hub(out_dir, push_to_hub_repo, private)
        print(f"pushed {out_dir} to {url}{' (private)' if private else ''}")
    return out_dir
