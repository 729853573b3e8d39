"""Readers for the MMEB hub datasets (or any local snapshot of their repos) and the benchmark's
subset/dataset lists with meta-task and IND/OOD membership (METHODS §1).

Everything goes through `datasets.load_dataset(source, subset, split=split)`, so a hub id
(`TIGER-Lab/MMEB-train`) and a local directory holding the same files both work.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import DataError
from .schema import (
    EVAL_COLUMNS,
    TRAIN_COLUMNS,
    EvalRow,
    TrainPair,
    check_columns,
    parse_eval_row,
    parse_train_row,
)

log = logging.getLogger(__name__)

META_TASKS = ("Classification", "VQA", "Retrieval", "Grounding")

#: The 20 MMEB-train subsets (hub config names), which are also the 20 IND eval datasets.
MMEB_TRAIN_SUBSETS = (
    "ImageNet_1K", "N24News", "HatefulMemes", "VOC2007", "SUN397",
    "OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
    "VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA",
    "MSCOCO",
)
#: Train config names that differ from the eval config of the same dataset.
TRAIN_TO_EVAL_NAME = {"ImageNet_1K": "ImageNet-1K"}

_EVAL_TABLE = {
    "Classification": (("ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397"),
                       ("Place365", "ImageNet-A", "ImageNet-R", "ObjectNet", "Country211")),
    "VQA": (("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W"),
            ("ScienceQA", "VizWiz", "GQA", "TextVQA")),
    "Retrieval": (("VisDial", "CIRR", "VisualNews_t2i", "VisualNews_i2t", "MSCOCO_t2i", "MSCOCO_i2t", "NIGHTS", "WebQA"),
                  ("OVEN", "FashionIQ", "EDIS", "Wiki-SS-NQ")),
    "Grounding": (("MSCOCO",), ("Visual7W-Pointing", "RefCOCO", "RefCOCO-Matching")),
}
#: The 36 MMEB-eval datasets: name -> (meta-task, "IND" | "OOD").
MMEB_EVAL_DATASETS: dict[str, tuple[str, str]] = {
    name: (meta, split)
    for meta, (ind, ood) in _EVAL_TABLE.items()
    for split, names in (("IND", ind), ("OOD", ood))
    for name in names
}
#: Classification subsets (SaHa skips its similarity re-sort for these).
CLASSIFICATION_SUBSETS = frozenset(
    [n for n, (m, _) in MMEB_EVAL_DATASETS.items() if m == "Classification"] + ["ImageNet_1K"]
)


def _is_local(source: str) -> bool:
    return os.path.isdir(source)


def local_cache_dir(source: str, subset: str) -> str:
    """A `datasets` cache directory keyed on the snapshot's absolute path and its files' size/mtime.

    `datasets` keys the cache of a local directory on its base name, not its location or content,
    so two snapshots named alike (or one regenerated in place) would silently share a stale cache.
    """
    import hashlib

    import datasets

    root = Path(source).resolve()
    h = hashlib.sha256(str(root).encode())
    files = [root / "README.md", *sorted((root / subset).rglob("*"))] if (root / subset).is_dir() else \
        sorted(p for p in root.rglob("*") if p.is_file() and "images" not in p.parts[len(root.parts):][:1])
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return str(Path(datasets.config.HF_DATASETS_CACHE) / "embedlab_local" / h.hexdigest()[:24])


def available_configs(source: str) -> list[str]:
    import datasets

    return list(datasets.get_dataset_config_names(source))


def load_split(source: str, subset: str, split: str, columns, schema: str):
    """`load_dataset(source, subset, split=split)` with errors that list what is available."""
    import datasets

    source = str(source)
    if _is_local(source):
        names = available_configs(source)
        if subset not in names:
            raise DataError(f"unknown subset {subset!r} in {source}; available: {names}", dataset=subset)
    elif source.startswith(("/", ".", "~")) or source.count("/") != 1:
        # Not a hub id (owner/name): do not let `datasets` go to the network for a mistyped path.
        raise DataError(f"data source {source} is not an existing directory nor a hub id (owner/name)",
                        dataset=subset)
    kwargs = {"cache_dir": local_cache_dir(source, subset)} if _is_local(source) else {}
    try:
        ds = datasets.load_dataset(source, subset, split=split, **kwargs)
    except ValueError as e:
        msg = str(e)
        if "BuilderConfig" in msg or "not found" in msg:
            raise DataError(f"unknown subset {subset!r} in {source}: {msg}", dataset=subset) from None
        if "Unknown split" in msg:
            raise DataError(f"unknown split {split!r}: {msg}", dataset=subset) from None
        raise
    check_columns(ds.column_names, columns, subset, schema)
    return ds


def _rows(ds, limit: int | None):
    n = len(ds) if limit is None else min(len(ds), int(limit))
    cols = ds.select(range(n)).to_dict() if n < len(ds) else ds.to_dict()
    names = list(cols)
    for i in range(n):
        yield i, {c: cols[c][i] for c in names}


def read_train_pairs(source: str, subset: str, split: str = "original", max_rows: int | None = None,
                     use_negatives: bool = True) -> list[TrainPair]:
    """Parse a training subset (first `max_rows` rows when capped, as the published recipes do)."""
    ds = load_split(source, subset, split, TRAIN_COLUMNS, "MMEB-train")
    pairs = [parse_train_row(row, subset, i, use_negatives) for i, row in _rows(ds, max_rows)]
    if not pairs:
        raise DataError(f"subset has no rows in split {split!r} of {source}", dataset=subset)
    return pairs


def read_eval_rows(source: str, dataset: str, split: str = "test", max_rows: int | None = None) -> list[EvalRow]:
    ds = load_split(source, dataset, split, EVAL_COLUMNS, "MMEB-eval")
    rows = [parse_eval_row(row, dataset, i) for i, row in _rows(ds, max_rows)]
    if not rows:
        raise DataError(f"dataset has no rows in split {split!r} of {source}", dataset=dataset)
    return rows


def image_paths_missing(items, loader, threads: int = 32, progress: bool | None = None) -> list[str]:
    """Relative paths among `items` (Items) whose file does not exist under the loader's root, in first-seen order.

    Each unique path is checked once, in `threads` parallel threads: a stat is I/O that releases the GIL, so
    threads overlap its latency (on network filesystems a stat takes 0.1–1 ms, and MMEB-train has about a
    million images). A progress bar shows for more than 20,000 paths (`progress=None`) or when asked."""
    import concurrent.futures

    from tqdm.auto import tqdm

    unique = list(dict.fromkeys(it.image for it in items if it.image is not None))
    root = None if loader.root is None else os.fspath(loader.root)
    isfile, join, isabs = os.path.isfile, os.path.join, os.path.isabs

    def check(block: list[str]) -> list[bool]:
        return [isfile(p if root is None or isabs(p) else join(root, p)) for p in block]

    step = 2048
    blocks = [unique[i : i + step] for i in range(0, len(unique), step)]
    exists: list[bool] = []
    show = len(unique) > 20_000 if progress is None else progress
    with tqdm(total=len(unique), desc="checking images", unit="img", disable=not show, mininterval=1.0) as bar, \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(threads, len(blocks)))) as pool:
        for result in pool.map(check, blocks):  # in order
            exists.extend(result)
            bar.update(len(result))
    return [p for p, ok in zip(unique, exists) if not ok]


def describe_source(source: str) -> str:
    return str(Path(source).resolve()) if _is_local(str(source)) else str(source)
