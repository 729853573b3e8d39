"""Glue shared by the entry points: build the eval suite from config, filter what a model can
score, run the protocol, and print/write/log the result table."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch.distributed
from omegaconf import DictConfig, OmegaConf

from .mmeb import EvalDataset, chance_level, evaluate_embedder, load_eval_suite, render_table, write_results

log = logging.getLogger(__name__)


def build_suite(eval_data: DictConfig | Mapping) -> list[EvalDataset]:
    cfg = OmegaConf.to_container(eval_data, resolve=True) if isinstance(eval_data, DictConfig) else dict(eval_data)
    if cfg.get("bundled"):
        from datamodules.offline import ensure_offline

        ensure_offline(cfg["bundled"])
    return load_eval_suite(cfg["source"], cfg["datasets"], cfg.get("split", "test"), cfg.get("image_root"),
                           cfg.get("max_rows"))


def compatible(suite: list[EvalDataset], embedder, skip: bool) -> tuple[list[EvalDataset], list[str]]:
    """Datasets the embedder can score; image datasets are skipped (and named) for text-only models."""
    if embedder.family.takes_images:
        return suite, []
    needs = [ds.name for ds in suite if ds.needs_images]
    if needs and not skip:
        raise ValueError(f"the {embedder.family.name} model takes no images, but eval datasets {needs} have images; "
                         "select text-only datasets or set eval.skip_incompatible=true")
    kept = [ds for ds in suite if not ds.needs_images]
    if not kept:
        raise ValueError(f"no eval dataset is text-only, and the {embedder.family.name} model takes no images")
    if needs:
        log.warning("skipped %d eval dataset(s) that need images (model takes none): %s", len(needs), needs)
    return kept, needs


def score(embedder, suite: list[EvalDataset], eval_cfg: Mapping, label: str, output_dir: str | Path | None = None,
          loggers=(), log_prefix: str = "eval", distributed: bool = False) -> dict:
    """Evaluate, then print, write (results.json/.md under `output_dir`) and log the table.

    `distributed=True`: every rank of the initialised process group calls this; the encoding is sharded
    across ranks, every rank gets the results, and only rank 0 prints, writes and logs."""
    suite, skipped = compatible(suite, embedder, bool(eval_cfg.get("skip_incompatible", True)))
    results = evaluate_embedder(embedder, suite, batch_size=int(eval_cfg.get("batch_size", 64)),
                                num_workers=int(eval_cfg.get("num_workers", 0)),
                                tie_rule=eval_cfg.get("tie_rule", "first"), distributed=distributed)
    chance = chance_level(suite)
    if distributed and torch.distributed.get_rank() != 0:
        return {**results, "_chance": chance, "_skipped": skipped}
    notes = f"Chance level (mean of 1/#candidates): {chance:.1f}\n"
    if skipped:
        notes += f"Skipped (need images, model takes none): {', '.join(skipped)}\n"
    table = render_table(results, label)
    print(f"\n== MMEB-style evaluation: {label} ==\n{table}{notes}", flush=True)
    if output_dir is not None:
        write_results(results, output_dir, label, notes)
    log_results(results, loggers, log_prefix)
    return {**results, "_chance": chance, "_skipped": skipped}


def log_results(results: Mapping, loggers, prefix: str) -> None:
    metrics = {f"{prefix}/overall": results["overall"]}
    for key in ("IND", "OOD"):
        if results[key] is not None:
            metrics[f"{prefix}/{key}"] = results[key]
    metrics.update({f"{prefix}/{m}": v for m, v in results["meta_tasks"].items()})
    metrics.update({f"{prefix}/{n}": d["precision@1"] for n, d in results["datasets"].items()})
    for lg in loggers:
        lg.log_metrics(metrics)
        try:
            from lightning.pytorch.loggers import WandbLogger
        except ImportError:  # pragma: no cover
            continue
        if isinstance(lg, WandbLogger):
            rows = [[n, d["meta_task"], d["split"], d["num_queries"], d["precision@1"]]
                    for n, d in results["datasets"].items()]
            lg.log_table(key=f"{prefix}/mmeb_table", columns=["dataset", "meta_task", "split", "queries", "p@1"],
                         data=rows)
