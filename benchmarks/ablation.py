"""The hard-negative ablation on the bundled data: loss ∈ {infonce, hardness_weighted} × sampler ∈
{random, saha} × seeds, equal steps, then a table (mean ± std of Overall and of the eval sets whose
candidates are compositional hard negatives) and a plot of the positive/negative similarity overlap.

    python benchmarks/ablation.py [--seeds 1,2,3] [--steps 600] [--out logs/ablation] [extra Hydra overrides…]
    python benchmarks/ablation.py --report logs/ablation/<sweep>     # only re-aggregate finished runs
    python benchmarks/ablation.py --losses infonce --samplers saha --mine-with <run>/embedder

SaHa clusters are mined first with the zero-shot (untrained) tiny model and the hierarchical prompt,
as the method prescribes (`python mine.py data=bundled`); `--mine-with DIR` mines them with a saved
Embedder instead (into <sweep>/clusters), e.g. one trained by an earlier run."""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Eval sets whose candidate lists are built from compositional perturbations of the ground truth.
HARD_SETS = ("ShapeT2I", "ShapeI2T", "CaptionParaphrase", "ShapeGrounding")


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def last_value(metrics_csv: Path, key: str) -> float | None:
    value = None
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row.get(key):
                value = float(row[key])
    return value


def collect(sweep: Path) -> list[dict]:
    rows = []
    for job in sorted(p for p in sweep.iterdir() if (p / "eval" / "results.json").is_file()):
        cfg = (job / ".hydra" / "overrides.yaml").read_text()
        overrides = dict(line[2:].split("=", 1) for line in cfg.splitlines() if line.startswith("- ") and "=" in line)
        res = json.loads((job / "eval" / "results.json").read_text())
        rows.append({
            "loss": overrides.get("loss", "infonce"), "sampler": overrides.get("sampler", "random"),
            "seed": overrides.get("seed"), "overall": res["overall"],
            "hard": statistics.mean(res["datasets"][d]["precision@1"] for d in HARD_SETS if d in res["datasets"]),
            "overlap": last_value(job / "csv" / "metrics.csv", "val/sim_overlap"), "dir": str(job),
        })
    return rows


def report(sweep: Path) -> str:
    rows = collect(sweep)
    if not rows:
        raise SystemExit(f"no finished runs (eval/results.json) under {sweep}")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["loss"], r["sampler"]), []).append(r)

    def ms(values):
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {sd:.1f}"

    lines = [f"| loss | sampler | seeds | Overall | hard-negative sets ({', '.join(HARD_SETS)}) | "
             "val similarity overlap |", "|---|---|---|---|---|---|"]
    for (loss, sampler), rs in sorted(groups.items()):
        lines.append(f"| {loss} | {sampler} | {len(rs)} | {ms([r['overall'] for r in rs])} | "
                     f"{ms([r['hard'] for r in rs])} | "
                     f"{ms([100 * r['overlap'] if r['overlap'] is not None else None for r in rs])} |")
    table = "\n".join(lines) + "\n"
    (sweep / "ablation.md").write_text(table)
    (sweep / "ablation.json").write_text(json.dumps(rows, indent=2))
    plot(groups, sweep / "ablation.png")
    return table


def plot(groups: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{loss}\n{sampler}" for loss, sampler in sorted(groups)]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for ax, key, title in ((axes[0], "overlap", "val overlap: negatives above the 10th-pct positive (%)"),
                           (axes[1], "overall", "bundled eval Overall (P@1, %)")):
        for i, k in enumerate(sorted(groups)):
            vals = [(100 * r[key] if key == "overlap" else r[key]) for r in groups[k] if r[key] is not None]
            ax.scatter([i] * len(vals), vals, color="tab:blue", alpha=0.7)
            if vals:
                ax.hlines(statistics.mean(vals), i - 0.25, i + 0.25, color="black")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--out", default=str(ROOT / "logs" / "ablation"))
    ap.add_argument("--report", default=None, help="only aggregate this finished sweep directory")
    ap.add_argument("--losses", default="infonce,hardness_weighted")
    ap.add_argument("--samplers", default="random,saha")
    ap.add_argument("--mine-with", default=None, help="mine the SaHa clusters with this saved Embedder directory")
    args, extra = ap.parse_known_args(argv)
    if args.report:
        print(report(Path(args.report)))
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
    table = report(sweep)
    print(f"\n{table}\nwritten: {sweep / 'ablation.md'}, {sweep / 'ablation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
