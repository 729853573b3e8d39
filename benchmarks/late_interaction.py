"""Single- vs multi-vector heads on the same tiny backbone and data, one storage/score table (docs/late_interaction.md).

    python benchmarks/late_interaction.py --steps 600

Trains the tiny Qwen2-VL twice with the same seed, data, loss and steps — last-token pooling, then
`model.pooling=multi_vector` — on the default bundled training data (batch 32), and scores both saved Embedders on
the full bundled MMEB v1-style eval (P@1, 9 × 200 queries) and the bundled MMEB-V2 suite (hit@1 / NDCG@5), plain and
with each index option: Matryoshka (`eval.dim`, single-vector; the token dimension for multi-vector), token pooling
(`eval.token_pooling`, multi-vector only), int8 and binary quantisation (`eval.quantize`). Every evaluation uses
`eval.tie_rule=strict` (a row whose ground truth only ties the best score is a miss): a barely trained multi-vector
model scores many candidates exactly alike — a causal backbone gives every document the same prompt-prefix token
vectors, and a query token whose best match is one of them adds the same amount to every document — and MMEB's
`first` rule would count those ties as hits (its ground truth is candidate 0). Storage is the mean over datasets of
each dataset's bytes per scored document. Every run is an ordinary `train.py` / `evaluate.py` command (printed), so
any row can be re-run by hand. Then the two heads' float32 evaluations are compared per suite with `compare.py`'s
paired bootstrap (multi − single, 95 % CI over queries; METHODS §13), and each index option with its head's float32
evaluation: a difference is read only where its interval excludes 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from evaluation.comparison import compare, verdict  # noqa: E402
from evaluation.outcomes import NotComparable, load_model  # noqa: E402

HEADS = {"single-vector (last token)": ["model.pooling=last"],
         "multi-vector (128/token, MaxSim)": ["model.pooling=multi_vector"]}
VARIANTS = [("float32", []), ("dim 64", ["eval.dim=64"]), ("token pooling ×2", ["eval.token_pooling=2"]),
            ("token pooling ×4", ["eval.token_pooling=4"]), ("int8", ["eval.quantize=int8"]),
            ("binary", ["eval.quantize=binary"])]
SUITES = {"V1 bundled (P@1)": ["eval_data=bundled"], "V2 bundled (score)": ["eval_data=mmeb_v2_bundled"]}


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def summary(results_file: Path) -> tuple[float, float, float]:
    """(overall score, mean vectors per document, mean bytes per document) of an evaluate.py results.json."""
    results = json.loads(results_file.read_text())
    datasets = results["datasets"].values()
    storage = [d["storage"] for d in datasets if "storage" in d]
    return (float(results["overall"]), sum(s["vectors_per_doc"] for s in storage) / len(storage),
            sum(s["bytes_per_doc"] for s in storage) / len(storage))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "logs" / "late_interaction")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps per head (batch 32; the default run's 600)")
    ap.add_argument("--max-rows", default="null", help="queries scored per eval dataset (default null: all of them)")
    args = ap.parse_args()
    out = args.out.resolve()
    rows = []
    eval_dirs: dict[tuple[str, str, str], Path] = {}
    for head, overrides in HEADS.items():
        run_dir = out / ("multi" if "multi" in head else "single")
        if not (run_dir / "embedder" / "embedder.json").is_file():
            run([sys.executable, "train.py", f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
                 f"callbacks.model_checkpoint.every_n_train_steps={args.steps}", "evaluate_before=false",
                 "evaluate_after=false", "logger=csv", *overrides, f"hydra.run.dir={run_dir}",
                 f"paths.output_dir={run_dir}"])
        for variant, extra in VARIANTS:
            multi = "multi" in head
            if "token pooling" in variant and not multi:
                continue
            cells = []
            for suite, suite_overrides in SUITES.items():
                eval_dir = out / "eval" / f"{run_dir.name}_{variant.replace(' ', '_').replace('×', 'x')}_{suite[:2]}"
                if not (eval_dir / "results.json").is_file():
                    run([sys.executable, "evaluate.py", f"embedder_dir={run_dir / 'embedder'}", "eval.tie_rule=strict",
                         "eval.progress=false", *suite_overrides, f"eval_data.max_rows={args.max_rows}", *extra,
                         f"hydra.run.dir={eval_dir}", f"paths.output_dir={eval_dir}"])
                cells.append(summary(eval_dir / "results.json"))
                eval_dirs[(run_dir.name, variant, suite)] = eval_dir
            rows.append((head, variant, cells))
    print("\n| Head | Index | V1 bundled P@1 | V2 bundled score | vectors/doc | bytes/doc (V1) | bytes/doc (V2) |")
    print("|---|---|---|---|---|---|---|")
    for head, variant, ((v1, vec1, b1), (v2, _vec2, b2)) in rows:
        print(f"| {head} | {variant} | {v1:.1f} | {v2:.1f} | {vec1:.1f} | {b1:,.0f} | {b2:,.0f} |")
    print("\nPaired differences (B − A, percentage points, 95 % paired bootstrap CI over queries, compare.py):\n")
    print("| B | A | suite | Δ [95 % CI] | reading |")
    print("|---|---|---|---|---|")
    pairs = [(("multi", "float32"), ("single", "float32"))]
    pairs += [((name, variant), (name, "float32")) for name in ("single", "multi") for variant, _ in VARIANTS
              if variant != "float32" and (name, variant, next(iter(SUITES))) in eval_dirs]
    for (b_name, b_variant), (a_name, a_variant) in pairs:
        for suite in SUITES:
            try:
                result = compare(load_model(eval_dirs[(a_name, a_variant, suite)]),
                                 load_model(eval_dirs[(b_name, b_variant, suite)]))
            except NotComparable as err:   # e.g. evaluations written before index options became comparable
                print(f"| {b_name} {b_variant} | {a_name} {a_variant} | {suite} | – | not comparable: {err} |")
                continue
            entry = result["overall"]
            lo, hi = entry["ci95"]
            print(f"| {b_name} {b_variant} | {a_name} {a_variant} | {suite} | {entry['delta']:+.1f} "
                  f"[{lo:+.1f}, {hi:+.1f}] | {verdict(entry)} |")


if __name__ == "__main__":
    main()
