"""Is model B better than model A? The paired comparison report (`python compare.py A B`): per dataset, per
meta-task (and split or modality) and Overall, the difference B − A in percentage points with its 95 % paired
bootstrap interval, the detectable difference, and per dataset the exact McNemar p-value and the discordant
queries (statistics: evaluation/paired.py; reading and checks: evaluation/outcomes.py).

Aggregates follow the MMEB definitions: a dataset's score is the mean of its queries' outcomes (×100); a
meta-task's, a split's or a modality's score is the mean over its datasets; Overall is the mean over all
datasets (not over meta-task means). Their intervals resample queries within each dataset (stratified).

The claim rule used in every sentence this module writes: an effect is stated only when its interval excludes
0; otherwise "no effect larger than X pp", X being the farther end of the interval (what the data rule out).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .outcomes import ModelOutcomes, comparable_datasets, in_seed_order, paired_by_seed
from .paired import (
    DEFAULT_DRAWS,
    DEFAULT_SEED,
    Interval,
    bootstrap_differences,
    mcnemar,
    mean_of,
    point_difference,
    summarise,
)

LEVEL = 0.95


def _interval(iv: Interval) -> dict:
    return {"delta": iv.delta, "ci95": [iv.low, iv.high], "se": iv.se, "detectable": iv.detectable}


def groups_of(model: ModelOutcomes, names: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """The MMEB aggregates over `names`: {"meta_tasks": {..}, "splits": {IND, OOD}} for MMEB (v1);
    {"modalities": {..}, "meta_tasks": {"<modality>/<meta-task>": ..}} for MMEB-V2."""
    ds = model.datasets
    out: dict[str, dict[str, list[str]]] = {"meta_tasks": {}}
    if model.v2:
        out["modalities"] = {}
        for n in names:
            out["modalities"].setdefault(str(ds[n].modality), []).append(n)
            out["meta_tasks"].setdefault(f"{ds[n].modality}/{ds[n].meta_task}", []).append(n)
    else:
        out["splits"] = {}
        for n in names:
            out["meta_tasks"].setdefault(ds[n].meta_task, []).append(n)
            if ds[n].split in ("IND", "OOD"):
                out["splits"].setdefault(ds[n].split, []).append(n)
    return out


def compare(a: ModelOutcomes, b: ModelOutcomes, *, draws: int = DEFAULT_DRAWS, seed: int = DEFAULT_SEED,
            common: bool = False) -> dict:
    """B − A in percentage points: {"datasets": {name: {"delta", "ci95", "p_mcnemar", "n", "discordant", …}},
    "overall": {"delta", "ci95", …}, "meta_tasks": …, "splits" | "modalities": …, and what was compared}.

    `p_mcnemar` is given for hit datasets when each model is one run (McNemar pairs single outcomes); with several
    runs, or a graded metric, it is null and `discordant` counts the queries whose (seed-averaged) outcomes differ."""
    names = comparable_datasets(a, b, common)
    paired = paired_by_seed(a, b)
    if paired:
        b = in_seed_order(b, a.seeds)
    pairs = {n: (a.datasets[n].values, b.datasets[n].values) for n in names}
    draws_by = {n: 100 * d for n, d in bootstrap_differences(pairs, draws=draws, seed=seed,
                                                              paired_runs=paired).items()}
    datasets = {}
    for n in names:
        va, vb = pairs[n]
        iv = summarise(100 * point_difference(va, vb), draws_by[n], LEVEL)
        single = va.shape[0] == 1 and vb.shape[0] == 1
        binary = a.datasets[n].binary and b.datasets[n].binary
        test = mcnemar(va[0], vb[0]) if single and binary else None
        datasets[n] = {
            "delta": iv.delta, "ci95": [iv.low, iv.high],
            "p_mcnemar": test.p if test else None, "n": int(va.shape[1]),
            "discordant": test.discordant if test else int(np.sum(va.mean(0) != vb.mean(0))),
            "se": iv.se, "detectable": iv.detectable, "a": 100 * float(va.mean()), "b": 100 * float(vb.mean()),
            "metric": a.datasets[n].metric,
        }

    def aggregate(members: Sequence[str]) -> dict:
        delta = float(np.mean([datasets[n]["delta"] for n in members]))
        entry = _interval(summarise(delta, mean_of(draws_by, members), LEVEL))
        entry.update(a=float(np.mean([datasets[n]["a"] for n in members])),
                     b=float(np.mean([datasets[n]["b"] for n in members])), datasets=len(members))
        return entry

    out = {"a": a.label, "b": b.label, "runs": {"a": a.runs, "b": b.runs}, "paired_seeds": paired,
           "draws": draws, "seed": seed, "level": LEVEL, "datasets": datasets}
    for kind, groups in groups_of(a, names).items():
        out[kind] = {g: aggregate(members) for g, members in groups.items()}
    out["overall"] = aggregate(names)
    return out


# ----------------------------------------------------------------------------------------------- wording
def verdict(entry: Mapping, what: str = "B − A") -> str:
    """The claim the statistics allow: an effect when the interval excludes 0, else the bound it sets."""
    lo, hi = entry["ci95"]
    if lo > 0 or hi < 0:
        return f"{what} = {entry['delta']:+.1f} pp (95 % CI [{lo:+.1f}, {hi:+.1f}])"
    bound = max(abs(lo), abs(hi))
    return (f"no effect larger than {bound:.1f} pp ({what} = {entry['delta']:+.1f}, 95 % CI [{lo:+.1f}, {hi:+.1f}]; "
            f"detectable at 80 % power: {entry['detectable']:.1f} pp)")


def _cell(entry: Mapping) -> list[str]:
    lo, hi = entry["ci95"]
    mark = " *" if lo > 0 or hi < 0 else ""
    return [f"{entry['a']:.2f}", f"{entry['b']:.2f}", f"{entry['delta']:+.2f}{mark}", f"[{lo:+.2f}, {hi:+.2f}]",
            f"{entry['detectable']:.2f}"]


def render(result: Mapping) -> str:
    """Markdown: one row per dataset, then the aggregates; `*` marks a difference whose interval excludes 0."""
    runs = result["runs"]
    head = (f"B − A, percentage points. A = {result['a']} ({len(runs['a'])} run(s)); B = {result['b']} "
            f"({len(runs['b'])} run(s)){'; runs paired by seed' if result.get('paired_seeds') else ''}.\n"
            f"95 % paired bootstrap CI ({result['draws']:,} draws, seed {result['seed']}; queries resampled within each "
            f"dataset{', runs resampled first' if len(runs['a']) > 1 or len(runs['b']) > 1 else ''}); detectable = "
            "the difference found with 80 % power at α = 0.05 (2.8 × paired SE); McNemar: exact, one run each.\n\n")
    lines = ["| | A | B | Δ (pp) | 95 % CI | detectable | p (McNemar) | n | discordant |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, d in result["datasets"].items():
        p = "–" if d["p_mcnemar"] is None else f"{d['p_mcnemar']:.3g}"
        metric = "" if d.get("metric", "hit@1") == "hit@1" else f" ({d['metric']})"
        lines.append("| " + " | ".join([f"{name}{metric}", *_cell(d), p, str(d["n"]), str(d["discordant"])]) + " |")
    for kind in ("modalities", "meta_tasks", "splits"):
        for name, g in (result.get(kind) or {}).items():
            lines.append("| " + " | ".join([f"**{name}** ({g['datasets']})", *_cell(g), "", "", ""]) + " |")
    o = result["overall"]
    lines.append("| " + " | ".join([f"**Overall** ({o['datasets']})", *_cell(o), "", "", ""]) + " |")
    return head + "\n".join(lines) + f"\n\nOverall: {verdict(o)}.\n"

