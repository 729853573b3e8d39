"""Export a training checkpoint as a standalone, shippable Embedder directory (LoRA merged into the weights):

    python export.py CHECKPOINT OUT_DIR [--dtype bfloat16] [--truncate-dim N] [--license apache-2.0]
                     [--push-to-hub ORG/NAME [--private]] [--overwrite]

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
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
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


if __name__ == "__main__":
    sys.exit(main())
