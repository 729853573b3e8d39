"""Mined hard negatives for the explicit-negative path (METHODS §2.4), written as a new MMEB-train dataset.

For each training subset: embed every query (one per row) and every unique positive, retrieve for each
query the top `pool` positives of *other* rows (inner-product search with faiss, exact by default, an
approximate IVF index with `index="ivf"` for millions of positives; the query's own
positive, and therefore anything identical to it, is never a candidate), filter them relative to the
query's own positive score and pick `num_negatives` with the chosen selector (`mining.selection`).
A multi-vector model (late interaction) is searched through its pooled proxies (`mining/embed.py`); with
`rescore=True` (`mining.rescore`, the default) the retrieved pool and the own positive are then re-scored by exact
MaxSim (the head's maxsim / meanmaxsim), so the filters, the selectors and the written statistics use the score the
model trains with and only the pool's membership comes from the proxy. Retrieve a larger `pool` to let MaxSim
reach further down the proxy's ranking.

The result is a local dataset in the exact MMEB-train layout (`<out>/<subset>/<split>-00000-of-00001.parquet`,
README.md with a `configs:` header) holding the original rows with `neg_text`/`neg_image_path` replaced by
the mined negatives (strings for one negative, lists for several; "" or [] where no candidate survived the
filters). Image paths stay relative to the original image root, so
`python train.py data.source=<out> data.image_root=<original image root>` trains on them unchanged.
`<out>/mined.json` records the settings, the embedder and per-subset statistics.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from datamodules.images import ImageLoader
from datamodules.mmeb import TRAIN_COLUMNS, load_split
from datamodules.schema import TRAIN_NEGATIVE_COLUMNS, Item, TrainPair
from evaluation.scorers import EmbeddingScorer
from mining.saha import build_ivf_index
from mining.selection import positive_aware_mask, select_negatives
from operations.atomic import swap_in_directory

from .embed import embed_subset

log = logging.getLogger(__name__)

MANIFEST = "mined.json"
MANIFEST_FORMAT = "embedlab.mined_negatives.v1"
# Queries searched per faiss call: bounds the [chunk, pool] score block.
_SEARCH_CHUNK = 4096


def retrieve(query: np.ndarray, candidates: np.ndarray, positive_of_query: np.ndarray, pool: int,
             index: str = "flat", nprobe: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-`pool` candidates per query other than its own positive: (ids [N, pool] with -1 padding,
    scores [N, pool], valid [N, pool]). `index="flat"` searches exactly; `"ivf"` through an approximate
    IVF-Flat index (`nprobe` lists per query), for corpora of millions of positives."""
    if index not in ("flat", "ivf"):
        raise ValueError(f"mining.index must be 'flat' or 'ivf', got {index!r}")
    num_fetch = min(pool + 1, candidates.shape[0])  # one extra: the own positive is usually among them
    ivf = build_ivf_index(candidates, nprobe) if index == "ivf" else None
    ids = np.empty((query.shape[0], num_fetch), dtype=np.int64)
    scores = np.empty((query.shape[0], num_fetch), dtype=np.float32)
    for lo in range(0, query.shape[0], _SEARCH_CHUNK):
        hi = min(lo + _SEARCH_CHUNK, query.shape[0])
        if ivf is None:
            scores[lo:hi], ids[lo:hi] = faiss.knn(query[lo:hi], candidates, num_fetch, faiss.METRIC_INNER_PRODUCT)
        else:  # the lists visited may hold fewer than num_fetch candidates: -1 ids, never valid
            scores[lo:hi], ids[lo:hi] = ivf.search(np.ascontiguousarray(query[lo:hi]), num_fetch)
    valid = (ids >= 0) & (ids != positive_of_query[:, None])
    valid &= np.cumsum(valid, axis=1) <= pool
    return ids, scores.astype(np.float64), valid


def choose_negatives(embedder, pairs: Sequence[TrainPair], image_loader: ImageLoader, *, pool: int = 100,
                     num_negatives: int = 1, relative: float | None = 0.95, margin: float | None = None,
                     min_score: float | None = None, max_score: float | None = None, select: str = "top",
                     simans_a: float = 0.5, simans_b: float = 0.0, rng: np.random.Generator,
                     index: str = "flat", nprobe: int = 32, batch_size: int = 64, num_workers: int = 0,
                     progress: bool = False, rescore: bool = True) -> tuple[list[list[Item]], dict[str, Any]]:
    """Mined negatives of each pair (one subset), in pairs order, and statistics of the run. `rescore`: a
    multi-vector model's pool is re-scored by exact MaxSim (module docstring)."""
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 1:
        raise ValueError(f"mining.pool must be a positive integer, got {pool!r}")
    emb = embed_subset(embedder, pairs, image_loader, batch_size, num_workers, progress, keep_tokens=rescore)
    ids, scores, valid = retrieve(emb.query, emb.candidates, emb.positive_of_query, pool, index, nprobe)
    positive_scores = np.einsum("nd,nd->n", emb.query, emb.candidates[emb.positive_of_query], dtype=np.float64)
    if emb.query_tokens is not None:   # exact MaxSim of the proxy's pool and of the own positive
        scores, positive_scores = maxsim_rescore(emb, ids, valid, EmbeddingScorer.for_model(embedder, None))
    keep = positive_aware_mask(scores, positive_scores, valid=valid, relative=relative, margin=margin,
                               min_score=min_score, max_score=max_score)
    chosen = select_negatives(scores, positive_scores, keep, num_negatives, select, rng, simans_a, simans_b)
    negatives: list[list[Item]] = []
    chosen_scores = []
    for q, columns in enumerate(chosen):
        picked = [int(ids[q, c]) for c in columns if c >= 0]
        negatives.append([emb.candidate_items[i] for i in picked])
        chosen_scores += [float(scores[q, c]) for c in columns if c >= 0]
    stats = {"candidates": len(emb.candidate_items), "mean_kept": float(keep.sum(axis=1).mean()),
             "no_negative": int(sum(not n for n in negatives)),
             "mean_positive_score": float(positive_scores.mean()),
             "mean_negative_score": float(np.mean(chosen_scores)) if chosen_scores else float("nan"),
             **({"scores": "maxsim"} if emb.query_tokens is not None else {})}
    return negatives, stats


def maxsim_rescore(emb, ids: np.ndarray, valid: np.ndarray, scorer: EmbeddingScorer) -> tuple[np.ndarray, np.ndarray]:
    """Exact (Mean)MaxSim of each query's retrieved candidates ([N, P], -inf where not valid) and of its own positive
    ([N]), float64, from `emb`'s token vectors: one blocked pass of the evaluation's row scoring (`scorer`, the
    embedder's head similarity) over the pool with the own positive as its last column."""
    columns = np.concatenate([np.where(valid, ids, -1), emb.positive_of_query[:, None]], axis=1)
    scores = scorer.score_rows(emb.query_tokens, emb.candidate_tokens, torch.arange(len(ids)),
                               torch.from_numpy(columns)).double().numpy()
    return scores[:, :-1], scores[:, -1]


def _negative_columns(negatives: Sequence[Sequence[Item]], num_negatives: int) -> tuple[pa.Array, pa.Array]:
    texts = [[n.text for n in negs] for negs in negatives]
    images = [[n.image or "" for n in negs] for negs in negatives]
    if num_negatives == 1:
        # One negative per row: plain strings, like the hub data.
        return pa.array([t[0] if t else "" for t in texts], pa.string()), \
            pa.array([i[0] if i else "" for i in images], pa.string())
    return pa.array(texts, pa.list_(pa.string())), pa.array(images, pa.list_(pa.string()))


def _with_negatives(table: pa.Table, neg_text: pa.Array, neg_image: pa.Array) -> pa.Table:
    """`table` with neg_text/neg_image_path replaced (or added), other columns untouched and in order."""
    new = dict(zip(TRAIN_NEGATIVE_COLUMNS, (neg_text, neg_image)))
    names = list(table.column_names) + [c for c in TRAIN_NEGATIVE_COLUMNS if c not in table.column_names]
    columns = [new[n] if n in new else table.column(n) for n in names]
    # The HF schema metadata would still describe the old negative column types.
    return pa.table(columns, names=names)


def dataset_readme(subsets: Sequence[str], split: str, description: str) -> str:
    """README.md whose YAML `configs:` header lets `datasets.load_dataset(dir, subset)` find the files."""
    lines = ["---", "configs:"]
    for name in subsets:
        lines += [f"- config_name: {name}", "  data_files:", f"  - split: {split}",
                  f"    path: {name}/{split}-*.parquet"]
    lines += ["---", "# embedlab mined hard negatives (MMEB-train layout)", "", description, ""]
    return "\n".join(lines)


def negatives_settings(pool, num_negatives, relative, margin, min_score, max_score, select, simans_a, simans_b, seed,
              index, nprobe, rescore: bool | None = None) -> dict:
    """The settings a mined dataset records; `rescore` (MaxSim re-scoring) only for a multi-vector embedder (None
    otherwise), so single-vector datasets keep the settings they were mined with."""
    return {"pool": pool, "num_negatives": num_negatives, "relative": relative, "margin": margin,
            "min_score": min_score, "max_score": max_score, "select": select, "simans_a": simans_a,
            "simans_b": simans_b, "seed": seed, "index": index, "nprobe": nprobe if index == "ivf" else None,
            **({} if rescore is None else {"rescore": bool(rescore)})}


def rescore_setting(embedder, rescore: bool) -> bool | None:
    """`mining.rescore` as it applies to `embedder`: None for a single-vector model (nothing to re-score)."""
    return bool(rescore) if getattr(embedder, "head", None) is not None else None


_IDENTITY = ("format", "source", "split", "settings", "embedder", "prompt")


def negatives_manifest(subsets: Mapping[str, Any], subset_info: Mapping[str, Mapping[str, Any]], split: str, *,
                       settings: Mapping[str, Any], embedder_description: Mapping[str, Any],
                       prompt: Mapping[str, Any]) -> dict:
    """What identifies a mined-negatives dataset: the rows it was mined from, the settings and the embedder."""
    return {"format": MANIFEST_FORMAT, "source": subset_info[next(iter(subsets))]["source"], "split": split,
            "settings": dict(settings), "embedder": dict(embedder_description), "prompt": dict(prompt),
            "subsets": {s: {"num_rows": int(subset_info[s]["num_rows"]),
                            "fingerprint": subset_info[s]["fingerprint"]} for s in subsets}}


def manifest_differences(out_dir: str | Path, manifest: Mapping[str, Any]) -> list[str] | None:
    """How the mined dataset in `out_dir` differs from `manifest` ([] = the same), or None when `out_dir`
    holds no readable mined dataset."""
    try:
        old = json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    diffs = []
    for key in _IDENTITY:
        a, b = old.get(key), manifest[key]
        if isinstance(a, dict) and isinstance(b, dict) and key == "settings":
            diffs += [f"mining.{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(f"{key}: {a!r} → {b!r}")
    rows = lambda m: {s: (v.get("num_rows"), v.get("fingerprint")) for s, v in m.get("subsets", {}).items()}  # noqa: E731
    if rows(old) != rows(manifest):
        diffs.append(f"rows: subsets {sorted(rows(old))} → {sorted(rows(manifest))} (or their rows changed)")
    return diffs


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """A short name for the settings, embedder and rows of a mined dataset (for a directory beside another)."""
    import hashlib

    identity = {k: manifest[k] for k in (*_IDENTITY, "subsets")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _up_to_date(out_dir: Path, manifest: Mapping[str, Any]) -> bool:
    return manifest_differences(out_dir, manifest) == []


def _replace_dir(built: Path, out_dir: Path) -> None:
    """Move the finished `built` tree to `out_dir`, replacing an earlier mined dataset there."""
    if out_dir.exists():
        if not (out_dir / MANIFEST).is_file() and any(out_dir.iterdir()):
            raise FileExistsError(f"{out_dir} is not empty and holds no {MANIFEST}, so it is not a mined dataset; "
                                  "refusing to replace it. Set mining.out_dir to a new or empty directory")
    swap_in_directory(built, out_dir)


def mine_negatives(embedder, subsets: Mapping[str, Sequence[TrainPair]], subset_info: Mapping[str, Mapping[str, Any]],
                   image_loader: ImageLoader, source: str, split: str, out_dir: str | Path, *, pool: int = 100,
                   num_negatives: int = 1, relative: float | None = 0.95, margin: float | None = None,
                   min_score: float | None = None, max_score: float | None = None, select: str = "top",
                   simans_a: float = 0.5, simans_b: float = 0.0, seed: int = 0, index: str = "flat",
                   nprobe: int = 32, embedder_description: Mapping[str, Any], force: bool = False,
                   batch_size: int = 64, num_workers: int = 0, progress: bool = True, rescore: bool = True
                   ) -> list[dict]:
    """Write the mined-negatives dataset for `subsets` (rows as read from `source`/`split`) to `out_dir`.

    Returns one summary row per subset. Skips everything when `out_dir` already holds a dataset mined
    from the same rows with the same settings and embedder, unless `force`.
    """
    out_dir = Path(out_dir)
    settings = negatives_settings(pool, num_negatives, relative, margin, min_score, max_score, select, simans_a, simans_b,
                         seed, index, nprobe, rescore_setting(embedder, rescore))
    manifest = negatives_manifest(subsets, subset_info, split, settings=settings,
                                  embedder_description=embedder_description, prompt=embedder.prompt.to_dict())
    differences = manifest_differences(out_dir, manifest)
    if differences and not force:
        raise FileExistsError(
            f"{out_dir} holds negatives mined with other settings, which this command would replace:\n  "
            + "\n  ".join(differences) + "\nWrite these elsewhere (mining.out_dir=<new dir>), or replace them "
            "with mining.force=true")
    if not force and _up_to_date(out_dir, manifest):
        log.info("mined negatives in %s are up to date, skipped (mining.force=true re-mines them)", out_dir)
        return [{"subset": s, "rows": manifest["subsets"][s]["num_rows"], "status": "skipped (up to date)"}
                for s in subsets]
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    summary = []
    try:
        for s_index, (subset, pairs) in enumerate(subsets.items()):
            start = time.perf_counter()
            num_rows = int(subset_info[subset]["num_rows"])
            # One stream per subset: adding a subset does not change another's negatives.
            rng = np.random.default_rng([seed, s_index])
            negatives, stats = choose_negatives(
                embedder, pairs, image_loader, pool=pool, num_negatives=num_negatives, relative=relative,
                margin=margin, min_score=min_score, max_score=max_score, select=select, simans_a=simans_a,
                simans_b=simans_b, rng=rng, index=index, nprobe=nprobe, batch_size=batch_size,
                num_workers=num_workers, progress=progress, rescore=rescore)
            per_row: list[list[Item]] = [[] for _ in range(num_rows)]
            for pair, negs in zip(pairs, negatives):
                per_row[pair.row] = negs
            table = load_split(source, subset, split, TRAIN_COLUMNS, "MMEB-train").with_format("arrow")[:num_rows]
            table = _with_negatives(table, *_negative_columns(per_row, num_negatives))
            path = built / subset / f"{split}-00000-of-00001.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(table, path)
            not_mined = num_rows - len(pairs)
            stats = {**stats, "no_negative": stats["no_negative"] + not_mined, "rows_not_mined": not_mined}
            manifest["subsets"][subset]["stats"] = stats
            summary.append({"subset": subset, "rows": num_rows, "status": "mined", **stats,
                            "seconds": round(time.perf_counter() - start, 1)})
        (built / "README.md").write_text(dataset_readme(
            list(subsets), split, f"Rows of {manifest['source']} (split {split}) with hard negatives mined by "
            f"`python mine.py mining.method=negatives` ({select} of the top {pool}, relative={relative}, "
            f"margin={margin}). Image paths are relative to the original data's image root."))
        manifest["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        (built / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        _replace_dir(built, out_dir)
    finally:
        if built.exists():
            shutil.rmtree(built, ignore_errors=True)
    return summary
