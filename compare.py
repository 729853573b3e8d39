"""Is model B better than model A, beyond the noise? Paired comparison of evaluations of the same eval data:

    python compare.py <eval dir A> <eval dir B> [<eval dir C> …] [--out FILE] [--draws 10000] [--seed 0] [--common]

An eval dir is `evaluate.py`'s run directory, a training run (its `eval/` is read) or a multirun directory of one
configuration over seeds (runs resampled, then queries). Every later directory is compared with the first.
Prints, per dataset, per meta-task (split / modality) and Overall, B − A in percentage points with its 95 %
paired bootstrap interval, the detectable difference, and per dataset the exact McNemar p-value and the
discordant queries (evaluation/comparison.py). `--out FILE` writes the JSON: {"datasets": {name: {"delta",
"ci95", "p_mcnemar", "n", "discordant", …}}, "overall": {"delta", "ci95", …}, …} for two directories, and
{"comparisons": [that, …]} for more. Evaluations of different data, settings or rows are refused (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation.comparison import compare, render
from evaluation.outcomes import NotComparable, load_model
from evaluation.paired import DEFAULT_DRAWS, DEFAULT_SEED


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("dirs", nargs="+", metavar="EVAL_DIR", help="evaluations; each later one is compared with the first")
    ap.add_argument("--out", default=None, help="write the comparison as JSON to this file")
    ap.add_argument("--draws", type=int, default=DEFAULT_DRAWS, help="bootstrap draws (default 10,000)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (default 0)")
    ap.add_argument("--common", action="store_true",
                    help="compare only the datasets both scored (default: refuse different dataset sets)")
    args = ap.parse_args(argv)
    if len(args.dirs) < 2:
        ap.error("give at least two evaluation directories (A, then B …)")
    if args.draws < 1:
        ap.error("--draws must be ≥ 1")
    try:
        models = [load_model(d) for d in args.dirs]
        results = [compare(models[0], m, draws=args.draws, seed=args.seed, common=args.common) for m in models[1:]]
    except NotComparable as err:
        print(f"compare.py: {err}", file=sys.stderr)
        return 2
    for result in results:
        print(render(result))
    if args.out:
        payload = results[0] if len(results) == 1 else {"comparisons": results}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=1) + "\n")
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
