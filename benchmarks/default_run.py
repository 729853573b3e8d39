"""The default run's figures, as the README quotes them: `make readme-figures`.

    python benchmarks/default_run.py                     # run `python train.py`, print the README tables
    python benchmarks/default_run.py --update-readme     # … and write them into README.md
    python benchmarks/default_run.py --run DIR           # tables of a finished run directory (no training)
    python benchmarks/default_run.py model.optimizer.lr=1e-3   # another value: one summary line

Runs exactly `python train.py [overrides]` from the repository root in a fresh run directory (so the
figures are what `make train` prints) and reads the run's summary.txt and results. With --update-readme
the tables go between the `default-run` markers of README.md; nothing else in the README changes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- default-run:begin -->", "<!-- default-run:end -->"
COLUMNS = ("Classification", "VQA", "Retrieval", "Grounding")


def train(overrides: list[str]) -> tuple[Path, float]:
    run_dir = ROOT / "logs" / "readme_figures" / time.strftime("%Y-%m-%d_%H-%M-%S")
    cmd = [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    print("running:", " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    return run_dir, time.perf_counter() - start


def candidates_per_dataset() -> dict[str, str]:
    """Candidates per row of each bundled eval dataset, read from the data the default run scores."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import operations.hydra_app  # noqa: F401  (registers the resolvers)
    from evaluation.runner import build_suite

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(ROOT / "logs")
        HydraConfig.instance().set_config(cfg)
        suite = build_suite(cfg.eval_data)
    out = {}
    for ds in suite:
        counts = sorted({len(r.candidates) for r in ds.rows})
        out[ds.name] = str(counts[0]) if len(counts) == 1 else f"{min(counts)}–{max(counts)}"
    return out


def tables(run_dir: Path) -> str:
    after = json.loads((run_dir / "eval" / "results.json").read_text())
    before_path = run_dir / "eval_untrained" / "results.json"
    before = json.loads(before_path.read_text()) if before_path.is_file() else None
    summary = (run_dir / "summary.txt").read_text().strip().splitlines()[-1]
    chance = float(re.search(r"chance ([0-9.]+)", summary).group(1))
    steps = int(re.search(r"\(step (\d+)\)", summary).group(1))

    def row(label: str, r: dict, bold: bool = False) -> str:
        cells = [f"{r['meta_tasks'][m]:.1f}" for m in COLUMNS] + [f"{r['IND']:.1f}", f"{r['OOD']:.1f}"]
        overall = f"{r['overall']:.1f}"
        return f"| {label} | " + " | ".join(cells) + f" | {'**' + overall + '**' if bold else overall} |"

    lines = ["| Model | Cls | VQA | Ret | Grd | IND | OOD | Overall |", "|---|---|---|---|---|---|---|---|"]
    if before is not None:
        lines.append(row("untrained (same init)", before))
    lines.append(row(f"trained, {steps} steps", after, bold=True))
    lines.append(f"| chance (mean of 1/#candidates) | | | | | | | {chance:.1f} |")
    candidates = candidates_per_dataset()
    lines += ["", "| Dataset (trained) | Meta-task | Split | Candidates | P@1 |", "|---|---|---|---|---|"]
    for name, d in after["datasets"].items():
        label = f"{name} (text only)" if name == "CaptionParaphrase" else name
        lines.append(f"| {label} | {d['meta_task']} | {d['split']} | {candidates.get(name, '?')} | "
                     f"{d['precision@1']:.1f} |")
    return "\n".join(lines)


def update_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    if BEGIN not in content or END not in content:
        raise SystemExit(f"README.md has no {BEGIN} … {END} block to update")
    head, rest = content.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    print(f"updated {readme}")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=None, help="a finished run directory: print its tables, no training")
    ap.add_argument("--update-readme", action="store_true", help="write the tables into README.md")
    args, overrides = ap.parse_known_args(argv)
    if args.run:
        run_dir, seconds = Path(args.run), None
    else:
        run_dir, seconds = train(overrides)
    print((run_dir / "summary.txt").read_text().strip().splitlines()[-1])
    if seconds is not None:
        print(f"wall time of `python train.py{' ' if overrides else ''}{' '.join(overrides)}`: {seconds:.0f} s")
    if overrides and not args.run:
        return 0  # another value: its summary line is the figure
    text = tables(run_dir)
    print(text)
    if args.update_readme:
        if overrides:
            raise SystemExit("--update-readme writes the default run's tables: give no overrides")
        update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
