"""The MMEB (v1) report: aggregation over the 36 datasets' Precision@1 (meta-tasks, IND, OOD, Overall = the mean
over datasets, not over meta-task means), chance level, and the result table and files."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from datamodules.mmeb import META_TASKS

from .engine import EvalDataset, dataset_notes, run_protocol
from .store import atomic_write


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(per_dataset: Mapping[str, Mapping]) -> dict:
    """{"overall", "IND", "OOD", "meta_tasks", "datasets"}: each a mean over datasets (percentages; None when
    no dataset counts). Dataset entries keep every key they have (diagnostics, skipped rows)."""
    scores = {n: float(d["precision@1"]) for n, d in per_dataset.items()}
    meta = {m: _mean([scores[n] for n, d in per_dataset.items() if d["meta_task"] == m]) for m in META_TASKS}
    return {
        "overall": _mean(list(scores.values())),
        "IND": _mean([scores[n] for n, d in per_dataset.items() if d["split"] == "IND"]),
        "OOD": _mean([scores[n] for n, d in per_dataset.items() if d["split"] == "OOD"]),
        "meta_tasks": {m: v for m, v in meta.items() if v is not None},
        "datasets": {n: {**d, "precision@1": scores[n], "num_queries": int(d["num_queries"])}
                     for n, d in per_dataset.items()},
    }


def chance_level(suite: Sequence[EvalDataset]) -> float | None:
    """Expected Overall of a random ranker: mean over datasets of mean(1/#candidates), in percent."""
    per = [sum(len(r.relevant) / len(r.candidates) for r in ds.rows) / len(ds.rows) for ds in suite if ds.rows]
    return 100.0 * sum(per) / len(per) if per else None


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def render_table(results: Mapping, label: str = "model", tie_flag_share: float = 0.01) -> str:
    """Markdown: the papers' summary columns, one row per dataset (with notes), then the failed datasets."""
    mt = results["meta_tasks"]
    head = "| Model | Cls | VQA | Ret | Grd | IND | OOD | Overall |\n|---|---|---|---|---|---|---|---|\n"
    row = (f"| {label} | " + " | ".join(_fmt(mt.get(m)) for m in META_TASKS)
           + f" | {_fmt(results['IND'])} | {_fmt(results['OOD'])} | {_fmt(results['overall'])} |\n")
    lines = ["\n| Dataset | Meta-task | Split | Queries | Precision@1 | Notes |", "|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(META_TASKS)}
    for name, d in sorted(results["datasets"].items(), key=lambda kv: (order[kv[1]["meta_task"]], kv[1]["split"], kv[0])):
        lines.append(f"| {name} | {d['meta_task']} | {d['split']} | {d['num_queries']} | {d['precision@1']:.1f} | "
                     f"{'; '.join(dataset_notes(d, tie_flag_share))} |")
    failed = results.get("failed") or {}
    if failed:
        lines.append(f"\n**{len(failed)} dataset(s) failed and are not in the means above** (Overall/IND/OOD cover "
                     f"{len(results['datasets'])} dataset(s); not comparable to a full run):")
        lines += [f"- {name}: {str(err).splitlines()[0] if err else err}" for name, err in failed.items()]
    return head + row + "\n".join(lines) + "\n"


def write_results(results: Mapping, directory: str | Path, label: str = "model", extra_md: str = "",
                  tie_flag_share: float = 0.01) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write(directory / "results.md",
                  render_table(results, label, tie_flag_share) + (("\n" + extra_md) if extra_md else ""))
    return directory


def evaluate_embedder(embedder, suite: Sequence[EvalDataset], *args, **kwargs) -> dict:
    """The protocol on every dataset of `suite` (`engine.run_protocol`, same arguments), aggregated as MMEB v1
    reports it (`aggregate`), plus `failed` ({dataset: error})."""
    out = run_protocol(embedder, suite, *args, **kwargs)
    return {**aggregate(out["datasets"]), "failed": out["failed"]}
