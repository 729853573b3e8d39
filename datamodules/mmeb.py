"""Readers for the MMEB hub datasets (or any local snapshot of their repos) and the benchmark's
subset/dataset lists with meta-task and IND/OOD membership (METHODS §1).

Everything goes through `datasets.load_dataset(source, subset, split=split)`, so a hub id
(`TIGER-Lab/MMEB-train`, `TIGER-Lab/MMEB-eval`, the V2 image-task copy `ziyjiang/MMEB_Test_Instruct`) and a
local directory holding the same files (`<config>/<split>-00000-of-00001.parquet` + a README with `configs:`)
both work. A local snapshot's files are checked with pyarrow before `datasets` reads them (0-byte or
unreadable files, files without rows, a column present in one split but not in another — which `datasets`
would otherwise fill with nulls), and any error `datasets` raises is re-raised as a `DataError` naming the
dataset, the split and the files, with what to do.

Readers return the rows and the rows they skipped, counted by reason (`ReadResult`): the reference skips
rows with an empty query or positive (`datamodules/schema.py`); nothing is dropped without a count.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from .errors import DataError
from .schema import (
    EVAL_COLUMNS,
    PLACEHOLDER,
    TRAIN_COLUMNS,
    EvalRow,
    SkipRow,
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


#: The V2 image-task copy (`ziyjiang/MMEB_Test_Instruct`, columns qry_inst/qry_text/qry_img_path/tgt_inst/
#: tgt_text/tgt_img_path): which of VLM2Vec-V2's parsers composes each dataset's texts
#: (VLM2Vec main, experiments/public/eval/image.yaml).
INSTRUCTION_PARSERS: dict[str, str] = {
    **dict.fromkeys(["ImageNet-1K", "N24News", "HatefulMemes", "VOC2007", "SUN397", "Place365", "ImageNet-A",
                     "ImageNet-R", "ObjectNet", "Country211"], "image_cls"),
    **dict.fromkeys(["OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W", "ScienceQA", "VizWiz",
                     "GQA", "TextVQA"], "image_qa"),
    **dict.fromkeys(["MSCOCO_i2t", "VisualNews_i2t"], "image_i2t"),
    **dict.fromkeys(["VisDial", "MSCOCO_t2i", "VisualNews_t2i", "WebQA", "EDIS", "Wiki-SS-NQ"], "image_t2i"),
    **dict.fromkeys(["CIRR", "NIGHTS", "OVEN", "FashionIQ", "MSCOCO", "RefCOCO", "RefCOCO-Matching",
                     "Visual7W-Pointing"], "image_i2i_vg"),
}
INSTRUCTION_COLUMNS = ("qry_inst", "tgt_inst")
DATA_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")


class ReadResult(NamedTuple):
    """Rows of one subset/dataset, the rows skipped (reason -> count) and rows kept with a note (reason -> count,
    e.g. `placeholder_without_image`: a text with `<|image_1|>` and no image, kept as the reference keeps it)."""

    rows: list
    skipped: dict[str, int]
    notes: dict[str, int]


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


def local_data_files(source: str, subset: str) -> dict[str, list[Path]]:
    """The data files of a local snapshot's config, by split: `<config>/<split>-*.<ext>` (the hub layout) or
    `<config>/<split>/*.<ext>` (the hub's parquet-conversion layout)."""
    folder = Path(source) / subset
    out: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return out
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.suffix not in DATA_SUFFIXES:
            continue
        rel = f.relative_to(folder)
        split = rel.parts[0] if len(rel.parts) > 1 else f.name.split("-")[0].split(".")[0]
        out.setdefault(split, []).append(f)
    return out


def readme_configs(source: str) -> list[str]:
    """The config names a local snapshot's README.md lists in its YAML `configs:` (the hub layout); [] without."""
    import yaml

    readme = Path(source) / "README.md"
    if not readme.is_file():
        return []
    text = readme.read_text(errors="replace")
    if not text.startswith("---"):
        return []
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return []
    configs = meta.get("configs") if isinstance(meta, dict) else None
    return [str(c.get("config_name")) for c in configs or [] if isinstance(c, dict) and c.get("config_name")]


def dataset_folders(source: str) -> list[str]:
    """The folders of a local snapshot that hold data files (the datasets it has)."""
    root = Path(source)
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "images"
                  and local_data_files(source, p.name))


def _check_dataset_folder(source: str, subset: str) -> None:
    """A dataset that a local snapshot neither has a folder for nor lists: name the folder looked for and the
    datasets that are there (`datasets` would say "No (supported) data files found" naming only the root)."""
    folder = Path(source) / subset
    if folder.is_dir() or subset in readme_configs(source):
        return  # a listed config without its folder is named by _check_local_files, with a re-download hint
    present = dataset_folders(source)
    shown = ", ".join(present[:40]) + (f", … ({len(present)} in all)" if len(present) > 40 else "")
    raise DataError(f"dataset folder {folder} does not exist; {source} holds {len(present)} dataset folder(s): "
                    f"{shown or 'none'}. Check the dataset's name (eval_data.datasets / data.subsets) and the "
                    "source directory (eval_data.source / data.source)", dataset=subset)


def _check_local_files(source: str, subset: str, split: str) -> None:
    """Find, before `datasets` does, the file problems it reports badly or not at all."""
    import pyarrow.parquet as pq

    files = local_data_files(source, subset)
    folder = Path(source) / subset
    redownload = (f"re-download it (e.g. `huggingface-cli download <repo> --repo-type dataset --include "
                  f"'{subset}/*' --local-dir {source}`)")
    if not files:
        state = "is missing" if not folder.is_dir() else "holds no data files"
        raise DataError(f"config folder {folder} {state}, but the snapshot's README lists config {subset!r}; "
                        f"{redownload}", dataset=subset, field=f"split {split}")
    if split not in files:
        raise DataError(f"no data file for split {split!r} in {folder} (found splits {sorted(files)}); choose one of "
                        f"those or {redownload}", dataset=subset, field=f"split {split}")
    columns: dict[Path, list[str]] = {}
    for s, paths in files.items():
        for f in paths:
            if f.suffix != ".parquet":
                continue
            if f.stat().st_size == 0:
                raise DataError(f"file {f} is empty (0 bytes), an interrupted download or copy; {redownload}",
                                dataset=subset, field=f"split {s}")
            try:
                meta = pq.read_metadata(f)
                columns[f] = list(pq.read_schema(f).names)
            except Exception as e:  # pyarrow raises ArrowInvalid/OSError with messages that name no dataset
                raise DataError(f"file {f} is not a readable parquet file ({type(e).__name__}: {e}); {redownload}",
                                dataset=subset, field=f"split {s}") from None
            if meta.num_rows == 0 and s == split:
                raise DataError(f"file {f} has 0 rows: split {split!r} of {subset!r} is empty; {redownload}, or "
                                "leave this dataset out of the run", dataset=subset, field=f"split {s}")
    if len({tuple(sorted(c)) for c in columns.values()}) > 1:
        # `datasets` reads a config's splits with one schema: a column missing in one split would become nulls
        # there (an image column turned into "no image") or fail with a cast error naming no dataset.
        union = sorted({c for cols in columns.values() for c in cols})
        lines = [f"{f} lacks {sorted(set(union) - set(c))}" for f, c in columns.items() if set(c) != set(union)]
        raise DataError("the files of this config do not have the same columns: " + "; ".join(lines)
                        + f". Every split of a config needs the same columns; {redownload}",
                        dataset=subset, field=f"split {split}")


def load_split(source: str, subset: str, split: str, columns, schema: str):
    """`load_dataset(source, subset, split=split)` with errors that name the dataset, split and files."""
    import datasets

    source = str(source)
    local = _is_local(source)
    if local:
        _check_dataset_folder(source, subset)
        names = available_configs(source)
        if subset not in names:
            raise DataError(f"unknown subset {subset!r} in {source}; available: {names}", dataset=subset)
        _check_local_files(source, subset, split)
    elif source.startswith(("/", ".", "~")) or source.count("/") != 1:
        # Not a hub id (owner/name): do not let `datasets` go to the network for a mistyped path.
        raise DataError(f"data source {source} is not an existing directory nor a hub id (owner/name)",
                        dataset=subset)
    kwargs = {"cache_dir": local_cache_dir(source, subset)} if local else {}
    try:
        ds = datasets.load_dataset(source, subset, split=split, **kwargs)
    except ValueError as e:
        msg = str(e)
        if "BuilderConfig" in msg or "not found" in msg:
            raise DataError(f"unknown subset {subset!r} in {source}: {msg}", dataset=subset) from None
        if "Unknown split" in msg:
            raise DataError(f"unknown split {split!r}: {msg}", dataset=subset) from None
        raise _load_error(source, subset, split, e) from e
    except Exception as e:  # datasets/pyarrow errors (DatasetGenerationError, CastError, ArrowInvalid, …)
        raise _load_error(source, subset, split, e) from e
    check_columns(ds.column_names, columns, subset, schema)
    if len(ds) == 0:
        raise DataError(f"split {split!r} of {describe_source(source)} has 0 rows; leave this dataset out or fix "
                        "the snapshot", dataset=subset, field=f"split {split}")
    return ds


def _load_error(source: str, subset: str, split: str, err: Exception) -> DataError:
    cause, chain = err, []
    while cause is not None and len(chain) < 4:
        chain.append(f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
        cause = cause.__cause__ or cause.__context__
    files = local_data_files(source, subset) if _is_local(source) else {}
    where = (f"files {[str(f) for s in sorted(files) for f in files[s]]}" if files
             else f"{source} (config {subset!r}, split {split!r})")
    return DataError(f"`datasets` could not read {where}: {' <- '.join(chain)}. Check that every file of the "
                     "config is complete and has the same columns (re-download the config), or clear the "
                     "`datasets` cache of this source", dataset=subset, field=f"split {split}")


def _rows(ds, limit: int | None):
    n = len(ds) if limit is None else min(len(ds), int(limit))
    cols = ds.select(range(n)).to_dict() if n < len(ds) else ds.to_dict()
    names = list(cols)
    for i in range(n):
        yield i, {c: cols[c][i] for c in names}


def row_location(source: str, subset: str, split: str, index: int) -> str:
    """Where row `index` of a split lives: the data file of a local snapshot and the row's index in that file (a
    split may span several files), or the hub dataset, config and split."""
    if not _is_local(str(source)):
        return f"{source}, config {subset!r}, split {split!r}"
    files = sorted(local_data_files(str(source), subset).get(split, []))
    if len(files) == 1:
        return f"{files[0]}, row {index}"
    import pyarrow.parquet as pq

    start = 0
    for f in files:
        if f.suffix != ".parquet":
            break
        n = pq.read_metadata(f).num_rows
        if index < start + n:
            return f"{f}, row {index - start}"
        start += n
    return f"one of {[str(f) for f in files]}"


def _located(err: DataError, source: str, subset: str, split: str, index: int) -> DataError:
    """`err` of row `index`, naming the file that holds the row."""
    if err.row is None or err.file is not None:
        return err
    return err.located(row_location(source, subset, split, index))


def _report(kind: str, name: str, split: str, total: int, result: ReadResult) -> None:
    if result.skipped:
        log.warning("%s %s (split %s): skipped %d of %d rows as the reference skips them (%s)", kind, name, split,
                    sum(result.skipped.values()), total, ", ".join(f"{k}: {v}" for k, v in sorted(result.skipped.items())))
    if result.notes.get("query_image_not_used"):
        log.warning("%s %s (split %s): %d query images not used (VLM2Vec-V2's text-to-image parser ignores "
                    "qry_img_path)", kind, name, split, result.notes["query_image_not_used"])
    if result.notes.get("placeholder_without_image"):
        log.info("%s %s (split %s): %d rows hold %s without an image; kept, formatted by the prompt's "
                 "placeholder_without_image rule", kind, name, split, result.notes["placeholder_without_image"],
                 PLACEHOLDER)


def read_train_subset(source: str, subset: str, split: str = "original", max_rows: int | None = None,
                      use_negatives: bool = True) -> ReadResult:
    """Parse a training subset (first `max_rows` rows when capped, as the published recipes do), counting the
    rows the reference skips."""
    ds = load_split(source, subset, split, TRAIN_COLUMNS, "MMEB-train")
    pairs, skipped, total = [], Counter(), 0
    for i, row in _rows(ds, max_rows):
        total += 1
        try:
            pairs.append(parse_train_row(row, subset, i, use_negatives))
        except SkipRow as s:
            skipped[s.reason] += 1
        except DataError as err:
            raise _located(err, source, subset, split, i) from None
    notes = Counter("placeholder_without_image" for p in pairs
                    if p.query.placeholder_without_image or p.positive.placeholder_without_image)
    result = ReadResult(pairs, dict(skipped), dict(notes))
    _report("subset", subset, split, total, result)
    if not pairs:
        raise DataError(f"subset has no usable rows in split {split!r} of {describe_source(source)} ({total} read, "
                        f"skipped: {dict(skipped)})", dataset=subset)
    return result


def read_train_pairs(source: str, subset: str, split: str = "original", max_rows: int | None = None,
                     use_negatives: bool = True) -> list[TrainPair]:
    """The pairs of `read_train_subset` (skipped rows are logged)."""
    return read_train_subset(source, subset, split, max_rows, use_negatives).rows


def compose_instruction_row(row: dict, dataset: str, parser: str | None = None, visual_token: bool = True) -> dict:
    """A row of the V2 image-task copy (separate instruction columns) as the MMEB-eval row that VLM2Vec-V2
    builds from it, with `<|image_1|>` where V2 puts the model's image token, so every prompt format then
    renders it (VLM2Vec main, src/data/eval_dataset/image_{cls,qa,i2t,t2i,i2i_vg}*.py and
    src/model/processor.py:process_input_text). V2 ignores `tgt_inst` for the cls/qa/i2t parsers and the query
    image of the t2i parser; so does this function (logged once per dataset by the reader). `parser` defaults to
    the dataset's V2 parser (MMEB-V2 catalog datasets name theirs). `visual_token=False`: `process_input_text` as
    VLM2Vec runs it for GME (src/model/processor.py:655-659: no image token, `instruction + " "` without text;
    `mmeb_v2_gme.py`)."""
    parser = parser or INSTRUCTION_PARSERS.get(dataset)
    if parser is None:
        raise DataError(f"dataset has instruction columns {list(INSTRUCTION_COLUMNS)} but no known V2 parser; known "
                        f"datasets: {sorted(INSTRUCTION_PARSERS)}", dataset=dataset)

    def with_image(instruction: str, text: str = "") -> str:
        # process_input_text(instruction, text=…, add_image_token=True): "<image token> " + instruction [+ " " + text]
        if not visual_token:
            return (instruction + " " + text).replace(" \n", "\n")
        prompt = instruction + (" " + text if text else "")
        return (PLACEHOLDER + " " + prompt).replace(" \n", "\n")

    q_inst, q_text = row.get("qry_inst") or "", row.get("qry_text") or ""
    t_inst, t_texts, t_paths = row.get("tgt_inst") or "", list(row.get("tgt_text") or []), row.get("tgt_img_path")
    q_path = row.get("qry_img_path") or ""
    if parser in ("image_cls", "image_i2t"):
        query = with_image(q_inst.replace(PLACEHOLDER, ""), q_text) + "\n"
        cands = t_texts
    elif parser in ("image_qa", "image_i2i_vg"):
        query = with_image("\n" + q_inst.replace(PLACEHOLDER, "").strip(), q_text) + "\n"
        cands = t_texts
    else:  # image_t2i: text query, the placeholder (if any) stays where the instruction has it
        query = q_inst + " " + q_text + "\n" + ("\n" if dataset == "VisDial" else "")
        q_path = ""
    if parser in ("image_t2i", "image_i2i_vg"):
        inst = t_inst.replace(PLACEHOLDER, "")
        if t_texts and t_texts[0].strip():  # WebQA, EDIS, RefCOCO-Matching: captions with the images
            cands = [with_image(inst + " " + cap) + "\n" for cap in t_texts]
        else:
            cands = [with_image(inst) + ("\n" if parser == "image_t2i" else "")] * len(t_texts)
    return {"qry_text": query, "qry_img_path": q_path, "tgt_text": cands, "tgt_img_path": t_paths}


def read_eval_dataset(source: str, name: str, split: str = "test", max_rows: int | None = None,
                      parser: str | None = None, row_builder=None) -> ReadResult:
    """Parse an eval dataset (MMEB-eval schema, or the V2 copy with instruction columns), counting skipped rows.
    `rows` are EvalRows with the ground truth at candidate index 0. `row_builder(raw, name, parser, index)`: how
    rows of the V2 copy become EvalRows instead of VLM2Vec-V2's composition (`mmeb_v2_qwen3.image_row`)."""
    ds = load_split(source, name, split, EVAL_COLUMNS, "MMEB-eval")
    instruct = all(c in ds.column_names for c in INSTRUCTION_COLUMNS)
    if instruct:
        parser = parser or INSTRUCTION_PARSERS.get(name)
        ignored = {"image_cls": "tgt_inst", "image_qa": "tgt_inst", "image_i2t": "tgt_inst",
                   "image_t2i": "qry_img_path"}.get(parser or "")
        log.info("dataset %s: instruction columns composed as VLM2Vec-V2's %s parser does%s", name, parser,
                 f" ({ignored} is not used, as in V2)" if ignored else "")
    elif any(c in ds.column_names for c in INSTRUCTION_COLUMNS):
        present = [c for c in INSTRUCTION_COLUMNS if c in ds.column_names]
        raise DataError(f"column(s) {present} without {sorted(set(INSTRUCTION_COLUMNS) - set(present))}: the V2 "
                        "instruction copy has both; this snapshot is neither MMEB-eval nor that copy", dataset=name)
    if row_builder is not None and not instruct:
        raise DataError(f"this composition needs the V2 instruction copy (columns {list(INSTRUCTION_COLUMNS)}); "
                        f"{describe_source(source)} has MMEB-eval's composed texts", dataset=name)
    rows, skipped, notes, total = [], Counter(), Counter(), 0
    for i, raw in _rows(ds, max_rows):
        total += 1
        if instruct:
            if parser == "image_t2i" and (raw.get("qry_img_path") or "").strip():
                notes["query_image_not_used"] += 1  # V2 does not use the query image of a text-to-image dataset
            if row_builder is None:
                raw = compose_instruction_row(raw, name, parser)
        try:
            row = row_builder(raw, name, parser, i) if row_builder is not None else parse_eval_row(raw, name, i)
        except SkipRow as s:
            skipped[s.reason] += 1
            continue
        except DataError as err:
            raise _located(err, source, name, split, i) from None
        rows.append(row)
        if row.query.placeholder_without_image or any(c.placeholder_without_image for c in row.candidates):
            notes["placeholder_without_image"] += 1
    result = ReadResult(rows, dict(skipped), dict(notes))
    _report("dataset", name, split, total, result)
    if not rows:
        raise DataError(f"dataset has no usable rows in split {split!r} of {describe_source(source)} ({total} read, "
                        f"skipped: {dict(skipped)})", dataset=name)
    return result


def read_eval_rows(source: str, dataset: str, split: str = "test", max_rows: int | None = None) -> list[EvalRow]:
    """The rows of `read_eval_dataset` (skipped rows are logged)."""
    return read_eval_dataset(source, dataset, split, max_rows).rows


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
