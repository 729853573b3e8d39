"""Scoring a model on a configured eval suite, as evaluate.py and the evaluations inside train.py do: build the suite from config, filter what a model can
score, resume what an earlier run into the same directory already scored, run the protocol, and
print/write/log the result table. A run with failed datasets writes everything it scored, then raises
`EvaluationFailed` listing the failures (the entry points exit non-zero)."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch.distributed
from omegaconf import DictConfig, OmegaConf

from datamodules.offline import ensure_offline
from embedders.prompts import PromptFormat

from .engine import EvalDataset, load_eval_suite, run_protocol
from .mmeb import aggregate, chance_level, render_table, write_results
from .mmeb_v2 import aggregate_v2, is_v2_suite, load_v2_suite, render_table_v2, write_results_v2
from .store import EvalSettings, ScoreStore, dataset_fingerprint, model_fingerprint

log = logging.getLogger(__name__)


class EvaluationFailed(RuntimeError):
    """Some eval datasets could not be loaded or scored; everything else was scored and written."""

    def __init__(self, failed: Mapping[str, str], output_dir: str | Path | None = None):
        self.failed = dict(failed)
        where = f"; the other results are in {output_dir}" if output_dir is not None else ""
        lines = "\n".join(f"  - {name}: {err}" for name, err in self.failed.items())
        super().__init__(f"{len(self.failed)} eval dataset(s) failed{where}. Fix them and run the same command "
                         f"with the same output directory to score only what is missing:\n{lines}")


def build_suite(eval_data: DictConfig | Mapping, prompt=None) -> list[EvalDataset]:
    """The eval suite of `eval_data`; `prompt` (the scoring model's PromptFormat or its config) chooses how
    MMEB-V2 items are composed (`mmeb_v2_composition`) unless `eval_data.composition` says."""
    cfg = OmegaConf.to_container(eval_data, resolve=True) if isinstance(eval_data, DictConfig) else dict(eval_data)
    if cfg.get("suite") == "mmeb_v2":  # MMEB-V2 (image, video, visual documents): evaluation/mmeb_v2.py
        if isinstance(prompt, DictConfig):
            prompt = OmegaConf.to_container(prompt, resolve=True)
        composition = PromptFormat.from_config(prompt).mmeb_v2_composition if prompt is not None else None
        return load_v2_suite(cfg, composition)
    if cfg.get("bundled"):
        ensure_offline(cfg["bundled"])
    return load_eval_suite(cfg["source"], cfg["datasets"], cfg.get("split", "test"), cfg.get("image_root"),
                           cfg.get("max_rows"), isolate_errors=True)


def compatible(suite: list[EvalDataset], embedder, skip: bool) -> tuple[list[EvalDataset], list[str]]:
    """Datasets the embedder can score; image datasets are skipped (and named) for text-only models, video
    datasets for families that take no videos."""
    if embedder.family.takes_images:
        if getattr(embedder.family, "takes_videos", False):
            return suite, []
        needs = [ds.name for ds in suite if ds.needs_videos]
        if needs and not skip:
            raise ValueError(f"the {embedder.family.name} model takes no videos, but eval datasets {needs} have "
                             "videos; select other datasets or set eval.skip_incompatible=true")
        if needs:
            log.warning("skipped %d eval dataset(s) that need videos (model takes none): %s", len(needs), needs)
        return [ds for ds in suite if not ds.needs_videos], needs
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


def _progress(eval_cfg: Mapping) -> bool:
    """`eval.progress`: true/false, or auto (default): on, except under pytest."""
    value = eval_cfg.get("progress", "auto")
    if value in (None, "auto"):
        return "PYTEST_CURRENT_TEST" not in os.environ
    return bool(value)


def _broadcast(value, distributed: bool):
    if not distributed:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def check_composition(suite: list[EvalDataset], prompt) -> None:
    """MMEB-V2 items composed for another evaluator than the prompt's would be scored with the wrong inputs."""
    wrong = {ds.name: ds.composition for ds in suite
             if ds.composition is not None and ds.composition != prompt.mmeb_v2_composition}
    if wrong:
        raise ValueError(f"MMEB-V2 datasets were read in another composition than prompt {prompt.name!r} scores "
                         f"({prompt.mmeb_v2_composition!r}): {wrong}. Build the suite with build_suite(eval_data, "
                         f"prompt=<the model's prompt>) or set eval_data.composition={prompt.mmeb_v2_composition}")


def with_prompt_sides(suite: list[EvalDataset], prompt) -> list[EvalDataset]:
    """The suite with the candidates of the prompt's `target_as_query` datasets formatted as queries (Gen2Embed's
    RefCOCO-Matching): a property of how the model was trained, so it comes from the embedder's prompt."""
    as_query = set(prompt.target_as_query)
    return [dataclasses.replace(ds, candidate_side="query") if ds.name in as_query else ds for ds in suite]


def score(embedder, suite: list[EvalDataset], eval_cfg: Mapping, label: str, output_dir: str | Path | None = None,
          loggers=(), log_prefix: str = "eval", distributed: bool = False, report: bool = True) -> dict:
    """Evaluate, then print, write and log the table.

    With `output_dir`: every dataset's `<dataset>_score.json` / `<dataset>_pred.jsonl` are written as soon
    as it is scored, and datasets already scored there by the same model, data and settings
    (`eval.resume`, default true) are taken from their files instead of being scored again;
    results.json/.md cover them all. `distributed=True`: every rank of the initialised process group calls
    this; the encoding is sharded across ranks, every rank gets the results, and only rank 0 prints, writes
    and logs. `report=False` prints no table (the online evaluation during training reports its own line).
    Raises `EvaluationFailed` (on every rank) after writing when a dataset failed."""
    suite, skipped = compatible(suite, embedder, bool(eval_cfg.get("skip_incompatible", True)))
    check_composition(suite, embedder.prompt)
    suite = with_prompt_sides(suite, embedder.prompt)
    settings = EvalSettings.from_config(eval_cfg)
    main_rank = not distributed or torch.distributed.get_rank() == 0
    store = ScoreStore(output_dir) if output_dir is not None else None
    model_fp = _broadcast(model_fingerprint(embedder) if store is not None and main_rank else None, distributed)
    fingerprints = {ds.name: {"model": model_fp, "data": dataset_fingerprint(ds), "settings": settings.fingerprint(),
                          "rules": settings.rules_fingerprint()}
                    for ds in suite if not ds.error and store is not None and main_rank}
    reused: dict[str, dict] = {}
    if store is not None and bool(eval_cfg.get("resume", True)) and main_rank:
        for ds in suite:
            if not ds.error and (entry := store.load(ds.name, fingerprints[ds.name])) is not None:
                reused[ds.name] = entry
        if reused:
            log.info("reusing %d dataset score(s) in %s made by the same model, data and settings: %s",
                     len(reused), output_dir, ", ".join(reused))
    reused = _broadcast(reused, distributed)

    def save(ds: EvalDataset, entry: dict, predictions: list[dict]) -> None:
        if store is not None and main_rank:
            store.save(ds.name, entry, predictions, fingerprints[ds.name], label)

    todo = [ds for ds in suite if ds.name not in reused]
    fresh = run_protocol(embedder, todo, batch_size=int(eval_cfg.get("batch_size", 64)),
                         num_workers=int(eval_cfg.get("num_workers", 0)), progress=_progress(eval_cfg),
                         distributed=distributed, settings=settings,
                         sort=bool(eval_cfg.get("sort_by_length", True)), on_result=save,
                         max_tokens=_positive_or_none(eval_cfg.get("max_tokens_per_batch"), "eval.max_tokens_per_batch"))
    per_dataset = {ds.name: reused.get(ds.name) or fresh["datasets"][ds.name]
                   for ds in suite if ds.name in reused or ds.name in fresh["datasets"]}
    v2 = is_v2_suite(suite)
    results = {**(aggregate_v2 if v2 else aggregate)(per_dataset), "failed": fresh["failed"]}
    chance = chance_level([ds for ds in suite if ds.name in per_dataset])
    extra = {"_chance": chance, "_skipped": skipped, "_reused": sorted(reused)}
    if main_rank and report:
        notes = (f"Chance level (mean of 1/#candidates{' over the datasets that rank their own candidates' if v2 else ''}"
                 f"): {_fmt_chance(chance)}\n")
        if skipped:
            notes += f"Skipped (visual inputs the model does not take): {', '.join(skipped)}\n"
        if reused:
            notes += f"Taken from earlier score files in this directory (same model, data, settings): {', '.join(sorted(reused))}\n"
        notes += (f"Ties: a row's tie is decided by the tie rule ({settings.tie_rule}) when the ground truth shares the "
                  f"top score (within {settings.tie_tolerance:g}); datasets where that holds for ≥ "
                  f"{100 * settings.tie_flag_share:g} % of rows are flagged.\n")
        table = render_table_v2(results, label, suite) if v2 else render_table(results, label, settings.tie_flag_share)
        print(f"\n== {'MMEB-V2' if v2 else 'MMEB-style'} evaluation: {label} ==\n{table}{notes}", flush=True)
        collapsed = [n for n, d in results["datasets"].items() if d.get("collapsed")]
        if collapsed:
            log.warning("the model's embeddings collapsed on %d of %d dataset(s) (%s): those scores count ties as "
                        "misses and are not a measure of the model", len(collapsed), len(results["datasets"]),
                        ", ".join(collapsed))
        if output_dir is not None:
            if v2:
                write_results_v2(results, output_dir, label, notes, suite)
            else:
                write_results(results, output_dir, label, notes, settings.tie_flag_share)
        if results["datasets"]:
            log_results(results, loggers, log_prefix)
    if results["failed"]:
        raise EvaluationFailed(results["failed"], output_dir)
    return {**results, **extra}


def _fmt_chance(chance: float | None) -> str:
    return "–" if chance is None else f"{chance:.1f}"


def result_metrics(results: Mapping, prefix: str) -> dict[str, float]:
    """The scalars of a result table, keyed `<prefix>/<name>`: overall, per modality (MMEB-V2) or per IND/OOD and
    meta-task (MMEB), and per dataset."""
    metrics = {f"{prefix}/overall": results["overall"]}
    if "modalities" in results:  # MMEB-V2: per modality and per dataset headline scores
        metrics.update({f"{prefix}/{m}": v["score"] for m, v in results["modalities"].items() if v["score"] is not None})
        metrics.update({f"{prefix}/{n}": d["score"] for n, d in results["datasets"].items()})
        return metrics
    for key in ("IND", "OOD"):
        if results[key] is not None:
            metrics[f"{prefix}/{key}"] = results[key]
    metrics.update({f"{prefix}/{m}": v for m, v in results["meta_tasks"].items()})
    metrics.update({f"{prefix}/{n}": d["precision@1"] for n, d in results["datasets"].items()})
    return metrics


def log_results(results: Mapping, loggers, prefix: str) -> None:
    metrics = result_metrics(results, prefix)
    if "modalities" in results:
        for lg in loggers:
            lg.log_metrics(metrics)
        return
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


def _positive_or_none(value, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (padded tokens per batch) or null, got {value!r}")
    return value
