"""Per-query outcomes of evaluated models, read back from the files every evaluation writes per dataset
(`<dataset>_score.json`: the result and the model/data/settings fingerprints; `<dataset>_pred.jsonl`: one line
per query), and the checks that make two evaluations comparable row by row.

What a "model" is here: one evaluation directory (`evaluate.py`'s run directory, or a training run's `eval/`),
or several runs of one configuration (a Hydra multirun over seeds), stacked as [runs, queries] per dataset.
What a query's outcome is: its hit (0/1) for row datasets (MMEB, MMEB-V2 image/video rows), its headline metric
(e.g. NDCG@5, in [0, 1]) for MMEB-V2 corpus tasks, read from the per-query `metrics` their pred lines carry.

Refused, with the file and what to do: datasets whose data or scoring settings differ between the two models
(their fingerprints say so), different query sets, pred files that disagree with their score file, runs of one
"model" that are not one configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

SCORE_SUFFIX = "_score.json"
PRED_SUFFIX = "_pred.jsonl"
#: A stored score and the mean of its pred file may differ by float32 rounding (P@1 is computed in float32).
_SCORE_TOLERANCE = 1e-3


class NotComparable(ValueError):
    """Two evaluations (or two runs of one model) that cannot be compared query by query."""


@dataclass
class DatasetOutcomes:
    """One dataset's per-query outcomes of one model: `values` [runs, queries] in [0, 1], columns in `ids` order."""

    name: str
    meta_task: str
    split: str
    modality: str | None
    metric: str
    data_fingerprint: str
    settings_fingerprint: str
    ids: tuple
    values: np.ndarray
    sources: list[Path] = field(default_factory=list)
    #: The scoring rules without the index options (EvalSettings.rules_fingerprint); None in files written before it.
    rules_fingerprint: str | None = None

    @property
    def binary(self) -> bool:
        return bool(np.isin(self.values, (0.0, 1.0)).all())


@dataclass
class ModelOutcomes:
    label: str
    runs: list[str]                 # one label per run (its seed when known, else its directory)
    seeds: list[str | None]         # the `seed=` override of each run, None when there is none
    datasets: dict[str, DatasetOutcomes]

    @property
    def v2(self) -> bool:
        return any(d.modality is not None for d in self.datasets.values())


def is_eval_dir(path: Path) -> bool:
    return path.is_dir() and any(path.glob(f"*{SCORE_SUFFIX}"))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise NotComparable(f"cannot read {path}: {err}") from None


def read_dataset(score_path: Path) -> DatasetOutcomes:
    """One dataset of one evaluation: its score file and the pred file beside it, checked against each other."""
    record = _read_json(score_path)
    result, fingerprint = record.get("result"), record.get("fingerprint")
    if not isinstance(result, dict) or not isinstance(fingerprint, dict):
        raise NotComparable(f"{score_path} has no `result`/`fingerprint`: not a score file written by evaluate.py "
                            "(the reference-layout copies under image/ video/ visdoc/ are not read)")
    name = record.get("dataset") or score_path.name[: -len(SCORE_SUFFIX)]
    pred_path = score_path.with_name(score_path.name[: -len(SCORE_SUFFIX)] + PRED_SUFFIX)
    if not pred_path.is_file():
        raise NotComparable(f"{pred_path} is missing: the per-query predictions of {name} are needed for a paired "
                            "comparison; score the dataset again (evaluate.py with eval.resume=false)")
    corpus = "corpus_size" in result
    metric = result.get("metric", "hit@1")
    ids, values = [], []
    with open(pred_path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                p = json.loads(line)
                if corpus:
                    per_query = p.get("metrics")
                    if per_query is None:
                        raise NotComparable(
                            f"{pred_path} line {line_no} has no per-query `metrics` (written by an evaluate.py older "
                            f"than the paired comparison): score {name} again with eval.resume=false")
                    ids.append(str(p["query_id"]))
                    values.append(float(per_query[metric]))
                else:
                    ids.append(int(p["row"]))
                    values.append(1.0 if p["hit"] else 0.0)
            except NotComparable:
                raise
            except (ValueError, KeyError, TypeError) as err:
                raise NotComparable(f"{pred_path} line {line_no}: cannot read a query's outcome ({type(err).__name__}: "
                                    f"{err}); expected keys {'query_id, metrics' if corpus else 'row, hit'}") from None
    n = int(result.get("num_queries", -1))
    if len(values) != n:
        raise NotComparable(f"{pred_path} has {len(values)} queries but {score_path.name} says {n}: the files are "
                            f"from different runs; score {name} again (eval.resume=false)")
    if len(set(ids)) != len(ids):
        raise NotComparable(f"{pred_path} lists a query twice")
    stored = float(result["score"] if "score" in result else result["precision@1"])
    mean = 100 * float(np.mean(values)) if values else 0.0
    if abs(mean - stored) > _SCORE_TOLERANCE:
        raise NotComparable(f"{pred_path}: the per-query {metric} averages to {mean:.4f} but {score_path.name} says "
                            f"{stored:.4f}: the files disagree; score {name} again (eval.resume=false)")
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    return DatasetOutcomes(
        name=name, meta_task=str(result.get("meta_task", "-")), split=str(result.get("split", "-")),
        modality=result.get("modality"), metric=metric, data_fingerprint=str(fingerprint.get("data")),
        settings_fingerprint=str(fingerprint.get("settings")), ids=tuple(ids[i] for i in order),
        values=np.asarray([values[i] for i in order], dtype=float)[None, :], sources=[score_path],
        rules_fingerprint=None if fingerprint.get("rules") is None else str(fingerprint["rules"]))


def read_eval_dir(directory: str | Path) -> dict[str, DatasetOutcomes]:
    """Every dataset scored in one evaluation directory (one run)."""
    directory = Path(directory)
    paths = sorted(directory.glob(f"*{SCORE_SUFFIX}"))
    if not paths:
        raise NotComparable(f"{directory} holds no *{SCORE_SUFFIX}: not an evaluation directory (evaluate.py's run "
                            "directory, or a training run's eval/)")
    out = {}
    for path in paths:
        d = read_dataset(path)
        out[d.name] = d
    return out


def _overrides(job: Path) -> dict[str, str] | None:
    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    pairs = (line[2:].split("=", 1) for line in path.read_text().splitlines() if line.startswith("- ") and "=" in line)
    return {k.lstrip("+~"): v.strip().strip("'\"") for k, v in pairs}


def find_runs(path: str | Path) -> list[tuple[Path, Path]]:
    """(run directory, evaluation directory) of every run under `path`: `path` itself when it is an evaluation
    directory or a training run (its `eval/`), else every such directory below it (a multirun), sorted."""
    path = Path(path)
    if not path.is_dir():
        raise NotComparable(f"{path} is not a directory")
    if is_eval_dir(path):
        return [(path, path)]
    if is_eval_dir(path / "eval"):
        return [(path, path / "eval")]
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir()):
        if child.name in ("eval_untrained", ".hydra", "mined", "mining"):
            continue   # the untrained model's scores belong to no trained run
        try:
            found += find_runs(child)
        except NotComparable:
            continue
    if not found:
        raise NotComparable(f"no evaluation under {path}: expected *{SCORE_SUFFIX} files in it, in its eval/, or in "
                            "run directories below it (a multirun)")
    return found


def load_model(path: str | Path, label: str | None = None) -> ModelOutcomes:
    """One model's outcomes: an evaluation directory, a training run, or a multirun of one configuration (its runs
    stacked; they must differ only in `seed`)."""
    runs = find_runs(path)
    return stack_runs([(run, eval_dir) for run, eval_dir in runs], label or str(path))


def stack_runs(runs: Sequence[tuple[Path, Path]], label: str) -> ModelOutcomes:
    """Stack the evaluations of several runs of one configuration ([(run directory, eval directory)])."""
    if not runs:
        raise NotComparable(f"{label}: no runs")
    overrides = [_overrides(run) for run, _ in runs]
    known = [o for o in overrides if o is not None]
    if len(known) > 1:
        keys = {k for o in known for k in o} - {"seed"}
        differ = sorted(k for k in keys if len({o.get(k) for o in known}) > 1)
        if differ:
            raise NotComparable(f"{label} holds runs of {len({tuple(o.get(k) for k in differ) for o in known})} "
                                f"configurations (they differ in {', '.join(differ)}, not only in seed): pass the runs "
                                "of one configuration (their job directories, or a directory holding only them)")
    seeds = [o.get("seed") if o else None for o in overrides]
    names = [f"seed={s}" if s is not None else str(run) for s, (run, _) in zip(seeds, runs)]
    if len(set(names)) != len(names):
        raise NotComparable(f"{label}: two runs have the same seed ({names}); a seed is one run")
    per_run = [read_eval_dir(eval_dir) for _, eval_dir in runs]
    first = per_run[0]
    for (_, eval_dir), datasets in zip(runs[1:], per_run[1:]):
        if set(datasets) != set(first):
            raise NotComparable(f"{label}: {eval_dir} scored datasets {sorted(datasets)} but {runs[0][1]} scored "
                                f"{sorted(first)}: every run of a model must be scored on the same datasets")
        for name, d in datasets.items():
            _check_same_rows(first[name], d, f"{runs[0][1]}", f"{eval_dir}")
    stacked = {}
    for name, d in first.items():
        stacked[name] = DatasetOutcomes(
            d.name, d.meta_task, d.split, d.modality, d.metric, d.data_fingerprint, d.settings_fingerprint, d.ids,
            np.concatenate([r[name].values for r in per_run]), [p for r in per_run for p in r[name].sources],
            d.rules_fingerprint)
    return ModelOutcomes(label, names, seeds, stacked)


def _check_same_rows(a: DatasetOutcomes, b: DatasetOutcomes, where_a: str, where_b: str) -> None:
    if a.data_fingerprint != b.data_fingerprint:
        raise NotComparable(f"{a.name}: the evaluations in {where_a} and {where_b} were made on different data "
                            f"(data fingerprints {a.data_fingerprint} and {b.data_fingerprint}: other rows, candidates, "
                            "max_rows or data version); score both models on the same eval data")
    # Index options (quantisation, token pooling) may differ: comparing them is the storage/score question. Files
    # written before the rules fingerprint existed are held to the whole settings fingerprint.
    rules = a.rules_fingerprint is not None and b.rules_fingerprint is not None
    if (a.rules_fingerprint != b.rules_fingerprint) if rules else (a.settings_fingerprint != b.settings_fingerprint):
        raise NotComparable(f"{a.name}: the evaluations in {where_a} and {where_b} were scored with different settings "
                            f"(settings fingerprints {a.settings_fingerprint} and {b.settings_fingerprint}: tie rule, "
                            "tolerances or scoring version); score both with the same eval.* settings")
    if a.metric != b.metric:
        raise NotComparable(f"{a.name}: {where_a} reports {a.metric}, {where_b} reports {b.metric}")
    if a.ids != b.ids:
        only_a, only_b = sorted(set(a.ids) - set(b.ids)), sorted(set(b.ids) - set(a.ids))
        raise NotComparable(f"{a.name}: the evaluations in {where_a} and {where_b} scored different queries "
                            f"({len(only_a)} only in the first, e.g. {only_a[:3]}; {len(only_b)} only in the second, "
                            f"e.g. {only_b[:3]})")


def comparable_datasets(a: ModelOutcomes, b: ModelOutcomes, common: bool = False) -> list[str]:
    """The datasets both models scored, checked row by row. Different dataset sets are refused (Overall would
    average different datasets) unless `common`, which keeps the shared ones."""
    only_a, only_b = sorted(set(a.datasets) - set(b.datasets)), sorted(set(b.datasets) - set(a.datasets))
    if (only_a or only_b) and not common:
        raise NotComparable(f"{a.label} and {b.label} scored different datasets (only in the first: {only_a}; only in "
                            f"the second: {only_b}); their Overall scores average different sets. Score the missing "
                            "ones, or pass --common to compare the shared datasets only")
    names = sorted(set(a.datasets) & set(b.datasets))
    if not names:
        raise NotComparable(f"{a.label} and {b.label} share no dataset")
    for name in names:
        _check_same_rows(a.datasets[name], b.datasets[name], a.label, b.label)
    return names


def paired_by_seed(a: ModelOutcomes, b: ModelOutcomes) -> bool:
    """Runs pair up when both models have several runs with the same seeds (the same data order per seed)."""
    return (len(a.runs) > 1 and None not in a.seeds and None not in b.seeds
            and sorted(a.seeds) == sorted(b.seeds))


def in_seed_order(model: ModelOutcomes, seeds: Sequence[str]) -> ModelOutcomes:
    """The model with its runs reordered to `seeds` (so run i of both models has the same seed)."""
    order = [model.seeds.index(s) for s in seeds]
    datasets = {n: replace(d, values=d.values[order]) for n, d in model.datasets.items()}
    return ModelOutcomes(model.label, [model.runs[i] for i in order], list(seeds), datasets)
