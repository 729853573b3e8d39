"""SaHa mining with a model (METHODS §6): embed each training subset, cluster it with
`mining.saha`, and write one cluster file per subset for `sampler=saha`.

The clustering itself (pure numpy/faiss) lives in `mining/saha.py`, the cluster file format in
`datamodules/samplers.py`; this module joins them to an embedder.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist

from datamodules.builders.bundled import EVAL_DATASETS as BUNDLED_DATASETS
from datamodules.images import ImageLoader
from datamodules.mmeb import CLASSIFICATION_SUBSETS
from datamodules.samplers import (
    CLUSTER_MATCH_FIELDS,
    cluster_file_header,
    cluster_file_matches,
    cluster_file_path,
    write_cluster_file,
)
from datamodules.schema import TrainPair
from mining.saha import mine_saha_clusters, saha_cluster_stats

from .embed import embed_subset

log = logging.getLogger(__name__)

#: MMEB's classification datasets (train and eval names) and the bundled dataset's: SaHa keeps their
#: owners in candidate-rank order instead of re-sorting them (`mining.classification_subsets` overrides).
DEFAULT_CLASSIFICATION_SUBSETS = frozenset(CLASSIFICATION_SUBSETS) | frozenset(
    name for name, (meta_task, _) in BUNDLED_DATASETS.items() if meta_task == "Classification")


def classification_set(subsets: Collection[str] | None) -> frozenset[str]:
    return DEFAULT_CLASSIFICATION_SUBSETS if subsets is None else frozenset(str(s) for s in subsets)


def cluster_rows(embedder, pairs: Sequence[TrainPair], image_loader: ImageLoader, *, k: int, pool_mult: int,
                 classification: bool, index: str = "flat", nprobe: int = 32, batch_size: int = 64,
                 num_workers: int = 0, progress: bool = False,
                 distributed: bool = False) -> tuple[list[list[int]], int] | None:
    """SaHa clusters of `pairs` (one subset) as lists of their row ids, and how many are phase-1 clusters.
    `distributed=True`: every rank encodes a shard; rank 0 clusters and returns, the others return None."""
    emb = embed_subset(embedder, pairs, image_loader, batch_size, num_workers, progress, distributed)
    if distributed and dist.get_rank() != 0:
        return None
    # The private entry point also reports the phase-1 count, which the sampler needs to tell
    # SaHa's deliberate phase-2 reuse of a row from a corrupt file.
    clusters, report = mine_saha_clusters(emb.query, emb.candidates, emb.positive_of_query, k, pool_mult,
                                           classification, index=index, nprobe=nprobe, progress=progress)
    return [[pairs[i].row for i in cluster] for cluster in clusters], report.phase1_clusters


def _differences(path: Path, header: Mapping[str, Any]) -> list[str] | None:
    """How the readable cluster file at `path` differs from `header` ([] = same); None: no readable file."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict):
        return None
    return [f"{field}: {old.get(field)!r} → {header.get(field)!r}" for field in CLUSTER_MATCH_FIELDS
            if old.get(field) != header.get(field)]


def refuse_replacing(out_dir: str | Path, headers: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse, before any mining, to replace cluster files mined from other data or with other settings
    (an unreadable file is replaced, with a warning)."""
    conflicts = []
    for subset, header in headers.items():
        path = cluster_file_path(out_dir, subset)
        if not path.exists():
            continue
        diffs = _differences(path, header)
        if diffs is None:
            log.warning("SaHa %s: %s is unreadable and will be replaced", subset, path)
        elif diffs:
            conflicts.append(f"{subset}: {path}\n      " + "\n      ".join(diffs))
    if conflicts:
        raise FileExistsError(
            "SaHa cluster files that this command would replace were mined from other data or with other "
            "settings:\n  " + "\n  ".join(conflicts) + "\nWrite these beside them with mining.out_dir=<new dir> "
            "(and train with sampler.clusters_dir=<new dir>), or replace them with mining.force=true")


def mine_saha(embedder, subsets: Mapping[str, Sequence[TrainPair]], subset_info: Mapping[str, Mapping[str, Any]],
              image_loader: ImageLoader, out_dir: str | Path, *, k: int = 15, pool_mult: int = 3,
              index: str = "flat", nprobe: int = 32, classification_subsets: Collection[str] | None = None,
              embedder_description: Mapping[str, Any], force: bool = False, batch_size: int = 64,
              num_workers: int = 0, progress: bool = True, distributed: bool = False) -> list[dict]:
    """Mine and write `<out_dir>/<subset>.saha.json` for every subset; returns one summary row per subset.

    `subsets[name]` are the rows to cluster (all rows as read, or fewer: rows absent from it end up in no
    cluster); `subset_info[name]` describes the subset as read (num_rows, fingerprint, split, source).
    A file whose header already matches (same data, k, pool_mult, classification rule, index, embedder
    and prompt) is kept as it is unless `force`.

    `distributed=True` (every rank of the process group calls it, with `force=True` so that all ranks
    encode the same subsets): the encoding is sharded across ranks; rank 0 clusters, writes and returns the
    summary, the other ranks return an empty list.
    """
    if distributed and not force:
        raise ValueError("distributed SaHa mining re-mines every subset: pass force=True")
    classification = classification_set(classification_subsets)
    prompt = embedder.prompt.to_dict()
    headers = {subset: cluster_file_header(subset, subset_info[subset], k=k, pool_mult=pool_mult,
                                           classification=subset in classification, index=index,
                                           embedder=embedder_description, prompt=prompt) for subset in subsets}
    if not force:
        refuse_replacing(out_dir, headers)
    summary = []
    for subset, pairs in subsets.items():
        header = headers[subset]
        path = cluster_file_path(out_dir, subset)
        up_to_date, reason = cluster_file_matches(path, header)
        row = {"subset": subset, "rows": int(subset_info[subset]["num_rows"]), "mined_rows": len(pairs),
               "classification": subset in classification}
        if up_to_date and not force:
            log.info("SaHa %s: %s is up to date, skipped (mining.force=true re-mines it)", subset, path)
            summary.append({**row, "status": "skipped (up to date)"})
            continue
        log.info("SaHa %s: mining %d rows (%s)", subset, len(pairs), "forced" if up_to_date else reason)
        start = time.perf_counter()
        result = cluster_rows(embedder, pairs, image_loader, k=k, pool_mult=pool_mult,
                              classification=subset in classification, index=index, nprobe=nprobe,
                              batch_size=batch_size, num_workers=num_workers, progress=progress,
                              distributed=distributed)
        if result is None:  # a rank other than 0 of a distributed run: it only encoded its shard
            continue
        clusters, phase1 = result
        stats = saha_cluster_stats(clusters, int(subset_info[subset]["num_rows"]))
        write_cluster_file(path, header, clusters, phase1, stats)
        summary.append({**row, "status": "mined", "clusters": stats["num_clusters"], "phase1": phase1,
                        "mean_size": stats["mean_cluster_size"], "covered": stats["queries_covered"],
                        "leftovers": stats["leftover_queries"], "reused": stats["queries_in_multiple_clusters"],
                        "seconds": round(time.perf_counter() - start, 1)})
    return summary
