"""The hard-negative ablation on the bundled data: loss ∈ {infonce, hardness_weighted} × sampler ∈
{random, saha} × seeds, equal steps, then a table (mean ± std of Overall and of the eval sets whose
candidates are compositional hard negatives) and a plot of the positive/negative similarity overlap.

    python benchmarks/ablation.py [--seeds 1,2,3] [--steps 600] [--out logs/ablation] [extra Hydra overrides…]
    python benchmarks/ablation.py --report logs/ablation/<sweep>     # only re-aggregate finished runs
    python benchmarks/ablation.py --losses infonce --samplers saha --mine-with <run>/embedder

SaHa clusters are mined first with the zero-shot (untrained) tiny model and the hierarchical prompt,
as the method prescribes (`python mine.py data=bundled`); `--mine-with DIR` mines them with a saved
Embedder instead (into <sweep>/clusters), e.g. one trained by an earlier run.

Besides mean ± std over seeds, the report gives the paired differences (hardness-weighted − InfoNCE within each
sampler, SaHa − random within each loss) with 95 % paired bootstrap intervals, seeds resampled then queries within
each dataset — the statistics of `python compare.py` (evaluation/paired.py) — and the claim each interval allows.

The sweep machinery below (running commands, reading finished multirun jobs, mean ± std tables, the
per-arm scatter plot, the paired contrasts) is shared with `benchmarks/ablation_real.py`."""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from evaluation.comparison import compare, verdict  # noqa: E402
from evaluation.outcomes import NotComparable, stack_runs  # noqa: E402
from evaluation.paired import DEFAULT_DRAWS  # noqa: E402

#: Eval sets whose candidate lists are built from compositional perturbations of the ground truth.
HARD_SETS = ("ShapeT2I", "ShapeI2T", "CaptionParaphrase", "ShapeGrounding")


# ---------------------------------------------------------------------------------- shared machinery
def run(cmd: list[str]) -> float:
    """Run `cmd` from the repository root, failing loudly; returns its wall time in seconds."""
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return time.perf_counter() - start


def metric_values(metrics_csv: Path, key: str) -> list[float]:
    """Every logged value of `key` in a Lightning CSV log, in order."""
    with open(metrics_csv) as f:
        return [float(row[key]) for row in csv.DictReader(f) if row.get(key)]


def last_value(metrics_csv: Path, key: str) -> float | None:
    values = metric_values(metrics_csv, key)
    return values[-1] if values else None


def job_overrides(job: Path) -> dict[str, str]:
    """The command-line overrides of one Hydra job (from its .hydra/overrides.yaml), '+' dropped."""
    lines = (job / ".hydra" / "overrides.yaml").read_text().splitlines()
    pairs = (line[2:].split("=", 1) for line in lines if line.startswith("- ") and "=" in line)
    return {k.lstrip("+"): v.strip("'\"") for k, v in pairs}


def finished_jobs(sweep: Path) -> Iterator[tuple[Path, dict[str, str], dict]]:
    """(job directory, overrides, eval/results.json) of every finished job under `sweep` (any depth)."""
    for results in sorted(sweep.rglob("eval/results.json")):
        job = results.parent.parent
        if (job / ".hydra" / "overrides.yaml").is_file():
            yield job, job_overrides(job), json.loads(results.read_text())


def mean_std(values: Sequence[float | None], digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def summary_table(groups: Mapping[tuple, list[dict]], key_names: Sequence[str],
                  columns: Sequence[tuple[str, Callable[[list[dict]], str]]]) -> str:
    """Markdown: one line per group (its key parts, the number of runs, then each column's cell)."""
    header = [*key_names, "seeds", *(name for name, _ in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, rows in groups.items():
        lines.append("| " + " | ".join([*map(str, key), str(len(rows)), *(cell(rows) for _, cell in columns)]) + " |")
    return "\n".join(lines) + "\n"


def plot_groups(groups: Mapping[tuple, list[dict]], path: Path, panels: Sequence[tuple[str, str]],
                reference: Mapping[str, float] | None = None, width: float | None = None) -> None:
    """One panel per (row key, title): every run as a dot, the group mean as a bar; `reference[key]`
    draws a dashed horizontal line (e.g. the zero-shot model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["\n".join(map(str, k)) for k in groups]
    fig, axes = plt.subplots(1, len(panels), figsize=(width or 4.5 * len(panels), 3.8), dpi=100, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for i, rows in enumerate(groups.values()):
            vals = [r[key] for r in rows if r.get(key) is not None]
            ax.scatter([i] * len(vals), vals, color="tab:blue", alpha=0.7, s=14)
            if vals:
                ax.hlines(statistics.mean(vals), i - 0.3, i + 0.3, color="black")
        if reference and reference.get(key) is not None:
            ax.axhline(reference[key], color="tab:red", linestyle="--", linewidth=1, label="zero-shot")
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)), names, fontsize=6 if len(names) > 8 else 8, rotation=90 if len(names) > 8 else 0)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def paired_contrasts(cells: Mapping[tuple, Sequence[Path]], pairs: Sequence[tuple[str, tuple, tuple]],
                     draws: int = DEFAULT_DRAWS, seed: int = 0, eval_dirs: Mapping[tuple, str] | None = None
                     ) -> list[dict]:
    """B − A for every (label, cell A, cell B) of `pairs` whose cells both hold runs (`cells`: {cell: job
    directories}, each job's final evaluation in <job>/eval, or in <job>/<eval_dirs[cell]>): Overall (and IND / OOD)
    differences in percentage points with their paired bootstrap intervals (evaluation/comparison.py), seeds paired
    when both cells ran the same ones (otherwise each side's runs are resampled on their own). A pair that cannot be
    compared (other eval data) is reported with its reason, not skipped."""
    models: dict[tuple, object] = {}

    def model(cell: tuple):
        if cell not in models:
            sub = (eval_dirs or {}).get(cell, "eval")
            models[cell] = stack_runs([(job, job / sub) for job in sorted(cells[cell])], "/".join(map(str, cell)))
        return models[cell]

    out = []
    for label, a, b in pairs:
        if a not in cells or b not in cells:
            continue
        try:
            r = compare(model(a), model(b), draws=draws, seed=seed)
        except NotComparable as err:
            out.append({"contrast": label, "a": list(a), "b": list(b), "error": str(err)})
            continue
        out.append({"contrast": label, "a": list(a), "b": list(b), "seeds": [len(r["runs"]["a"]), len(r["runs"]["b"])],
                    "paired_seeds": r["paired_seeds"], "overall": r["overall"], "splits": r.get("splits", {}),
                    "claim": verdict(r["overall"], label.split(" | ")[0])})
    return out


def contrast_table(contrasts: Sequence[dict]) -> str:
    """Markdown: one line per contrast; `*` marks an interval that excludes 0."""
    def cell(entry: Mapping | None) -> str:
        if not entry:
            return "–"
        lo, hi = entry["ci95"]
        return f"{entry['delta']:+.2f}{' *' if lo > 0 or hi < 0 else ''} [{lo:+.2f}, {hi:+.2f}]"

    # A label "B − A | arm" (a contrast within one arm of the other factor) gets its own "within" column.
    within = any(" | " in c["contrast"] for c in contrasts)

    def label(c: Mapping) -> str:
        if not within:
            return c["contrast"]
        name, _, arm = c["contrast"].partition(" | ")
        return f"{name} | {arm or '–'}"

    head = "| B − A |" + (" within |" if within else "")
    lines = [f"{head} seeds | Overall Δ [95 % CI] | detectable (80 %) | IND Δ [CI] | OOD Δ [CI] | claim |",
             "|---|" + ("---|" if within else "") + "---|---|---|---|---|---|"]
    for c in contrasts:
        if "error" in c:
            lines.append(f"| {label(c)} | – | not comparable: {c['error'].splitlines()[0]} | | | | |")
            continue
        seeds = f"{c['seeds'][0]}/{c['seeds'][1]}{' paired' if c['paired_seeds'] else ''}"
        lines.append(f"| {label(c)} | {seeds} | {cell(c['overall'])} | {c['overall']['detectable']:.2f} | "
                     f"{cell(c['splits'].get('IND'))} | {cell(c['splits'].get('OOD'))} | {c['claim']} |")
    return "\n".join(lines) + "\n"


def plot_contrasts(contrasts: Sequence[dict], path: Path) -> None:
    """A forest plot: each contrast's Overall difference with its 95 % interval; a line at 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [c for c in contrasts if "error" not in c]
    if not shown:
        return
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(shown) + 1.2), dpi=100)
    for i, c in enumerate(shown):
        d, (lo, hi) = c["overall"]["delta"], c["overall"]["ci95"]
        color = "tab:blue" if lo > 0 or hi < 0 else "tab:gray"
        ax.errorbar(d, i, xerr=[[d - lo], [hi - d]], fmt="o", color=color, capsize=3, markersize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(shown)), [c["contrast"] for c in shown], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("B − A, Overall (percentage points; 95 % paired bootstrap CI)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------------------------- the bundled ablation
def collect(sweep: Path) -> list[dict]:
    rows = []
    for job, overrides, res in finished_jobs(sweep):
        overlap = last_value(job / "csv" / "metrics.csv", "val/sim_overlap")
        rows.append({
            "loss": overrides.get("loss", "infonce"), "sampler": overrides.get("sampler", "random"),
            "seed": overrides.get("seed"), "overall": res["overall"],
            "hard": statistics.mean(res["datasets"][d]["precision@1"] for d in HARD_SETS if d in res["datasets"]),
            "overlap": 100 * overlap if overlap is not None else None, "dir": str(job),
        })
    return rows


def report(sweep: Path, draws: int = DEFAULT_DRAWS) -> str:
    rows = collect(sweep)
    if not rows:
        raise SystemExit(f"no finished runs (eval/results.json) under {sweep}")
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["loss"], r["sampler"])):
        groups.setdefault((r["loss"], r["sampler"]), []).append(r)
    table = summary_table(groups, ("loss", "sampler"), [
        ("Overall", lambda rs: mean_std([r["overall"] for r in rs])),
        (f"hard-negative sets ({', '.join(HARD_SETS)})", lambda rs: mean_std([r["hard"] for r in rs])),
        ("val similarity overlap", lambda rs: mean_std([r["overlap"] for r in rs])),
    ])
    cells: dict[tuple, list[Path]] = {}
    for r in rows:
        cells.setdefault((r["loss"], r["sampler"]), []).append(Path(r["dir"]))
    losses = sorted({k[0] for k in cells})
    samplers = sorted({k[1] for k in cells})
    pairs = [(f"hardness_weighted − infonce | {s}", ("infonce", s), ("hardness_weighted", s)) for s in samplers]
    pairs += [(f"saha − random | {x}", (x, "random"), (x, "saha")) for x in losses]
    contrasts = paired_contrasts(cells, pairs, draws=draws)
    if contrasts:
        table += ("\nPaired differences B − A (percentage points; 95 % paired bootstrap CI: seeds resampled, then "
                  "queries within each dataset; `*` = the interval excludes 0):\n\n" + contrast_table(contrasts))
    (sweep / "ablation.md").write_text(table)
    (sweep / "ablation.json").write_text(json.dumps({"runs": rows, "contrasts": contrasts}, indent=2))
    plot_groups(groups, sweep / "ablation.png", [("overlap", "val overlap: negatives above the 10th-pct positive (%)"),
                                                 ("overall", "bundled eval Overall (P@1, %)")], width=9)
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", default=str(ROOT / "logs" / "ablation"))
    ap.add_argument("--report", default=None, help="only aggregate this finished sweep directory")
    ap.add_argument("--losses", default="infonce,hardness_weighted")
    ap.add_argument("--samplers", default="random,saha")
    ap.add_argument("--mine-with", default=None, help="mine the SaHa clusters with this saved Embedder directory")
    ap.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="bootstrap draws of the paired differences")
    args, extra = ap.parse_known_args(argv)
    if args.report:
        print(report(Path(args.report), args.draws))
        return 0
    if args.mine_with and args.samplers != "saha":
        raise SystemExit("--mine-with only changes the SaHa clusters: use it with --samplers saha")
    sweep = Path(args.out) / time.strftime("%Y-%m-%d_%H-%M-%S")
    py = sys.executable
    mine_cmd = [py, "mine.py", "data=bundled", *[e for e in extra if e.startswith(("bundled.", "paths."))]]
    if args.mine_with:
        clusters = sweep / "clusters"
        # Quoted: run directories named after their overrides hold '=' and ','.
        mine_cmd += [f"embedder_dir='{Path(args.mine_with).resolve()}'", f"mining.out_dir={clusters}",
                     f"hydra.run.dir={sweep / 'mining'}"]
        extra = [*extra, f"sampler.clusters_dir={clusters}"]
    if "saha" in args.samplers.split(","):
        run(mine_cmd)
    run([py, "train.py", "-m", f"loss={args.losses}", f"sampler={args.samplers}", f"seed={args.seeds}",
         f"trainer.max_steps={args.steps}", "evaluate_before=false", "trainer.enable_progress_bar=false",
         f"hydra.sweep.dir={sweep}", *extra])
    table = report(sweep, args.draws)
    print(f"\n{table}\nwritten: {sweep / 'ablation.md'}, {sweep / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
