"""Export a training checkpoint as a standalone, shippable Embedder directory (LoRA merged into the weights):

    python export.py CHECKPOINT OUT_DIR [--dtype bfloat16] [--truncate-dim N] [--license apache-2.0]
                     [--push-to-hub ORG/NAME [--private]] [--overwrite]

or merge compatible runs by weight averaging (embedders/merging.py) into one such directory:

    python export.py --merge RUN_A/embedder RUN_B/embedder --weights 0.5,0.5 --out DIR [--dtype bfloat16]

The result loads with `embedders.Embedder.from_pretrained(OUT_DIR)`, with sentence-transformers
(`SentenceTransformer(OUT_DIR)`), plain transformers and vLLM, and carries a model card (README.md) with the training
configuration and the MMEB table of the run (read from the checkpoint's run directory: `.hydra/config.yaml`,
`eval/results.json`). `--push-to-hub` uploads it through huggingface_hub with the token in HF_TOKEN.
`--overwrite` replaces a non-empty OUT_DIR as a whole (refused otherwise). The work is done in shipping/export.py."""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", nargs="?")
    ap.add_argument("out_dir", nargs="?")
    ap.add_argument("--merge", nargs="+", metavar="MODEL", default=None,
                    help="average these saved Embedder directories or checkpoints (LoRA merged first) into --out")
    ap.add_argument("--weights", default=None, help="with --merge: one weight per model, summing to 1 (default: equal)")
    ap.add_argument("--out", default=None, help="with --merge: the output directory")
    ap.add_argument("--dtype", default=None, help="cast the weights before saving (e.g. bfloat16)")
    ap.add_argument("--truncate-dim", type=int, default=None,
                    help="ship Matryoshka-truncated embeddings: keep the first N dimensions (re-normalised)")
    ap.add_argument("--license", default=None, help="license id for the model card (default: the base model's, "
                                                     "when its local card names one; else 'other')")
    ap.add_argument("--run-dir", default=None, help="run directory with .hydra/config.yaml and eval/results.json "
                                                     "(default: the checkpoint's <run>/checkpoints/..)")
    ap.add_argument("--results", default=None, help="MMEB results.json for the card (default: <run dir>/eval/)")
    ap.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                    help="upload the exported directory to this Hub model repo (token from HF_TOKEN)")
    ap.add_argument("--private", action="store_true", help="create the Hub repo as private")
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT_DIR as a whole")
    args = ap.parse_args(argv)
    if args.merge is not None:
        return _merge(ap, args)
    if args.checkpoint is None or args.out_dir is None:
        ap.error("give CHECKPOINT OUT_DIR, or --merge MODEL MODEL … --out DIR")
    if args.private and not args.push_to_hub:
        ap.error("--private goes with --push-to-hub ORG/NAME")
    from shipping.export import export_checkpoint

    try:
        path = export_checkpoint(args.checkpoint, args.out_dir, args.dtype, args.truncate_dim, args.license,
                                 args.run_dir, args.results, args.push_to_hub, args.private, args.overwrite)
    except (PermissionError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {path}")
    return 0


def _merge(ap: argparse.ArgumentParser, args) -> int:
    from embedders.embedder import resolve_dtype
    from embedders.merging import merge_and_save

    if args.checkpoint or args.out_dir or args.push_to_hub or args.truncate_dim is not None:
        ap.error("--merge takes its models after the flag and writes to --out; export or push the merged directory "
                 "in a second command")
    if not args.out:
        ap.error("--merge needs --out DIR")
    if len(args.merge) < 2:
        ap.error("--merge needs at least two models")
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else [1 / len(args.merge)] * len(args.merge)
    except ValueError:
        ap.error(f"--weights must be comma-separated numbers, got {args.weights!r}")
    try:
        path = merge_and_save(args.merge, weights, args.out, resolve_dtype(args.dtype))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged {', '.join(args.merge)} with weights {weights} -> {path}\n"
          f"next: python evaluate.py embedder_dir={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
