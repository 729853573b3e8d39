"""MMEB-V2 on the shared evaluation machinery: build the suite from a `conf/eval_data/mmeb_v2*.yaml` config (the
readers of `datamodules/mmeb_v2_readers.py`), aggregate per modality, render the tables and write the outputs in
the reference's report shape. Encoding, scoring, resumption and failure handling are `evaluation/mmeb.py`'s,
`runner.py`'s and `store.py`'s, unchanged.

Aggregation (VLM2Vec `experiments/report_score_v2.py`, METHODS §1.5): per dataset its modality's headline metric
(image and video hit@1, visdoc ndcg_linear@5) x 100; a modality's score = mean over its scored datasets, and so
each meta-task's; Overall = mean over all scored datasets (not over modality means).

Outputs, next to the per-dataset files `store.py` writes: `<output>/<modality>/<dataset>_score.json` (the
reference's directory layout, so its report script reads our outputs unchanged; `MMLongBench-page` and
`ViDoSeek-page` keep their names there, the report script renames them to `-fixed` itself), and `results.json`
holding the report shape `{"metadata": {...}, "metrics": {"image": {dataset: score dict}, "video": ...,
"visdoc": ...}}` (the `-fixed` renaming applied, as the report does) next to our aggregate.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from datamodules.builders.bundled_v2 import ensure_bundled_v2
from datamodules.errors import DataError
from datamodules.mmeb_v2 import META_TASKS, MODALITIES, MODALITY_METRIC
from datamodules.mmeb_v2_readers import SuitePaths, load_labels, read_v2_dataset, v2_dataset_from_config

from .engine import EvalDataset, dataset_notes
from .store import atomic_write, safe_name

log = logging.getLogger(__name__)

MODALITY_TITLE = {"image": "Image", "video": "Video", "visdoc": "VisDoc"}
META_ABBREV = {"Classification": "CLS", "VQA": "VQA", "Retrieval": "RET", "Grounding": "GD", "QA": "QA",
               "MomentRetrieval": "MRET", "ViDoRe-V1": "VDRv1", "ViDoRe-V2": "VDRv2", "VisRAG": "VR",
               "VisDoc-OOD": "OOD"}
#: The reference report's renaming of two visdoc datasets ("temp fix" in report_score_v2.py).
REPORT_RENAME = {"MMLongBench-page": "MMLongBench-page-fixed", "ViDoSeek-page": "ViDoSeek-page-fixed"}


def is_v2_suite(suite) -> bool:
    return any(getattr(ds, "modality", None) is not None for ds in suite)


def load_v2_suite(cfg: Mapping, composition: str | None = None) -> list[EvalDataset]:
    """Every dataset of the config, read with its parser; a dataset that cannot be read is returned with its
    `error` (scored as failed, the others go on), as `load_eval_suite(isolate_errors=True)` does for MMEB.
    Items are composed as `cfg.composition`, else `composition` (the scoring prompt's), else VLM2Vec's."""
    if cfg.get("bundled_v2"):
        ensure_bundled_v2(**cfg["bundled_v2"])
    paths = SuitePaths(str(cfg["data_basedir"]), cfg.get("hub_snapshots"), cfg.get("num_frames"),
                       load_labels(cfg.get("video_labels")),
                       composition=cfg.get("composition") or composition or "vlm2vec")
    suite = []
    for name, entry in (cfg.get("datasets") or {}).items():
        d = v2_dataset_from_config(name, entry)   # configuration errors raise
        if d.modality not in MODALITIES:
            raise DataError(f"modality {d.modality!r} is not one of {MODALITIES}", dataset=name, field="modality")
        if d.meta_task not in META_TASKS[d.modality]:
            raise DataError(f"meta_task {d.meta_task!r} is not one of {META_TASKS[d.modality]}", dataset=name,
                            field="meta_task")
        split = {True: "IND", False: "OOD"}.get(d.in_distribution, "-")
        common = dict(name=name, meta_task=d.meta_task, split=split, rows=[], modality=d.modality, metric=d.metric,
                      composition=paths.composition)
        try:
            read = read_v2_dataset(d, paths, cfg.get("max_rows"))
        except Exception as err:
            log.error("eval dataset %s cannot be read: %s", name, err)
            suite.append(EvalDataset(**common, error=f"{type(err).__name__}: {err}"))
            continue
        suite.append(EvalDataset(**{**common, "rows": read.rows}, image_root=read.root, skipped=read.skipped,
                                 task=read.task, num_frames=read.num_frames, max_frames_saved=read.max_frames_saved,
                                 frame_saving=read.frame_saving, candidate_num_frames=read.candidate_num_frames))
    return suite


def _mean(values):
    values = list(values)
    return sum(values) / len(values) if values else None


def aggregate_v2(per_dataset: Mapping[str, Mapping]) -> dict:
    """{"overall", "modalities": {m: {"score", "datasets", "meta_tasks"}}, "datasets"}: means of the headline
    scores (x 100; None when nothing counts)."""
    scores = {n: float(d["score"]) for n, d in per_dataset.items()}
    modalities = {}
    for m in MODALITIES:
        names = [n for n, d in per_dataset.items() if d["modality"] == m]
        meta = {t: _mean(scores[n] for n in names if per_dataset[n]["meta_task"] == t) for t in META_TASKS[m]}
        modalities[m] = {"score": _mean(scores[n] for n in names), "datasets": len(names),
                         "metric": MODALITY_METRIC[m], "meta_tasks": {t: v for t, v in meta.items() if v is not None}}
    return {"overall": _mean(scores.values()), "modalities": modalities,
            "datasets": {n: dict(d) for n, d in per_dataset.items()}}


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.1f}"


def render_table_v2(results: Mapping, label: str = "model", suite=None) -> str:
    """Markdown: Overall and per-modality scores, then one table per modality (meta-task means, one row per
    dataset with its headline metric), then the failed datasets."""
    mods = results["modalities"]
    out = ["| Model | Overall | Image | Video | VisDoc |", "|---|---|---|---|---|",
           f"| {label} | {_fmt(results['overall'])} | " + " | ".join(_fmt(mods[m]['score']) for m in MODALITIES) + " |",
           "", "Datasets scored: " + ", ".join(f"{MODALITY_TITLE[m]} {mods[m]['datasets']}" for m in MODALITIES)]
    expected = {ds.name: ds.modality for ds in suite or ()}
    for m in MODALITIES:
        names = [n for n, d in results["datasets"].items() if d["modality"] == m]
        missing = [n for n, mod in expected.items() if mod == m and n not in results["datasets"]]
        if not names and not missing:
            continue
        metas = META_TASKS[m]
        out += ["", f"### {MODALITY_TITLE[m]} ({MODALITY_METRIC[m]} x 100)", "",
                "| " + " | ".join(META_ABBREV[t] for t in metas) + f" | {MODALITY_TITLE[m]} |",
                "|" + "---|" * (len(metas) + 1),
                "| " + " | ".join(_fmt(mods[m]["meta_tasks"].get(t)) for t in metas) + f" | {_fmt(mods[m]['score'])} |",
                "", "| Dataset | Meta-task | Queries | Corpus | Score | Notes |", "|---|---|---|---|---|---|"]
        order = {t: i for i, t in enumerate(metas)}
        for n in sorted(names, key=lambda n: (order.get(results["datasets"][n]["meta_task"], 99), n)):
            d = results["datasets"][n]
            out.append(f"| {n} | {d['meta_task']} | {d['num_queries']} | {d.get('corpus_size', '–')} | "
                       f"{d['score']:.1f} | {'; '.join(dataset_notes(d))} |")
        if missing:
            out.append(f"\nNot scored ({len(missing)}): {', '.join(missing)}")
    failed = results.get("failed") or {}
    if failed:
        out.append(f"\n**{len(failed)} dataset(s) failed and are not in the means above** (not comparable to a full "
                   "run):")
        out += [f"- {name}: {str(err).splitlines()[0] if err else err}" for name, err in failed.items()]
    return "\n".join(out) + "\n"


def reference_score(entry: Mapping) -> dict:
    """The reference's `<dataset>_score.json` content: every metric as a fraction, `num_pred`, `num_data`."""
    metrics = dict(entry.get("metrics") or {"hit@1": entry["precision@1"] / 100})
    return {**metrics, "num_pred": int(entry["num_queries"]), "num_data": int(entry["num_queries"])}


def report(results: Mapping, label: str) -> dict:
    """The reference report's JSON shape (`report_score_v2.py`)."""
    metrics = {m: {} for m in MODALITIES}
    for name, d in results["datasets"].items():
        key = REPORT_RENAME.get(name, name) if d["modality"] == "visdoc" else name
        metrics[d["modality"]][key] = reference_score(d)
    metadata = {"model_name": label, "report_generated_date": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "generated_by": "embedlab evaluate.py"}
    return {"metadata": metadata, "metrics": metrics}


def write_results_v2(results: Mapping, directory: str | Path, label: str = "model", extra_md: str = "",
                     suite=None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, d in results["datasets"].items():
        atomic_write(directory / d["modality"] / f"{safe_name(name)}_score.json",
                     json.dumps(reference_score(d), indent=2) + "\n")
    atomic_write(directory / "results.json", json.dumps({**report(results, label), **results}, indent=2) + "\n")
    atomic_write(directory / "results.md", render_table_v2(results, label, suite) + (("\n" + extra_md) if extra_md
                                                                                      else ""))
    return directory
