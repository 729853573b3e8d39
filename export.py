"""Export a training checkpoint as a standalone Embedder directory (LoRA merged into the weights):

    python export.py CHECKPOINT OUT_DIR [--dtype bfloat16]

The result is an ordinary Hugging Face model directory plus embedder.json: it reloads with
`embedders.Embedder.from_pretrained(OUT_DIR)` (or plain `transformers.AutoModel`), without peft
and without the training checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def export(checkpoint: str | Path, out_dir: str | Path, dtype: str | None = None) -> Path:
    from embedders.checkpoint_io import load_trained_module
    from embedders.embedder import resolve_dtype

    module = load_trained_module(checkpoint)
    embedder = module.embedder
    if dtype is not None:
        embedder = embedder.to(resolve_dtype(dtype))
    return embedder.save_pretrained(out_dir)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", default=None, help="cast the weights before saving (e.g. bfloat16)")
    args = ap.parse_args(argv)
    path = export(args.checkpoint, args.out_dir, args.dtype)
    print(f"exported {args.checkpoint} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
