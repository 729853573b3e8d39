"""Real-text retrieval data built offline from the docstrings of installed Python libraries, in the
exact MMEB-train / MMEB-eval layouts: query = a docstring's summary paragraph, target = the rest of it.

This module owns the extraction (source files parsed with `ast`, never imported), the documented
filters, the deduplication, the split into training libraries / held-out functions (IND) / held-out
libraries (OOD), and the atomic, lock-protected on-disk build (`ensure_docstrings`).

Layout written by ``ensure_docstrings(root)``::

    root/docstrings.json                               # settings, library versions, fingerprints, counts
    root/train/README.md                               # YAML `configs:` so load_dataset works
    root/train/<library>/original-00000-of-00001.parquet
    root/eval/README.md
    root/eval/<library>/test-00000-of-00001.parquet    # IND: training libraries; OOD: held-out libraries

What is extracted, from every public (no leading `_`) module-level function or class and every public
method of such a class, in every `.py` file of a library (`python` = the standard library):

- files under a directory named tests/test/testing/_vendor/vendor/examples/benchmarks are skipped; for
  `python` also site-packages, idlelib, lib2to3, tkinter, turtledemo, ensurepip, distutils, pydoc_data;
  files that do not parse with this Python are counted and skipped;
- the docstring (`ast.get_docstring`, cleaned) splits at its first blank line: summary paragraph = query,
  the rest = body. The body is cut at its first doctest line (`>>>`) or Examples/Example/Usage heading;
  reST directive lines (`.. xyz::`) and underline rules (`-----`) are dropped; whitespace is collapsed
  and the body is cut at the last space before `max_body_chars`;
- kept when the summary has 4–40 words, at most 200 characters, at most 3 lines and starts with a
  letter, the body has at least 15 words, and the summary does not occur inside the body (both
  normalised: lower-case, runs of non-word characters → one space), and neither contains a multimodal
  model's image/video token literally (`<image>`, `<|image_pad|>`, … — datamodules.schema.RESERVED_TOKENS,
  which the MMEB readers refuse as data: transformers documents its processors with them);
- deduplicated over all libraries together: a pair is dropped (every copy of it) when its normalised
  summary or its normalised body occurs in any other kept pair, so no text appears twice anywhere.

Split (deterministic, independent of file order): each library's pairs are ordered by the SHA-256 of
(library, qualified name, summary, body), so a function keeps its place when other functions change.
Walking that order, a pair becomes an eval row until `eval_per_library` are chosen; a pair that is a
near-duplicate of a chosen eval row — the same qualified name (a property's getter and setter), or a
body whose word 3-gram set has Jaccard similarity ≥ NEAR_DUP_JACCARD (0.3) with the eval row's body
(templated docstrings: numpy.ma's "masked array version of …", an nn module and its functional twin) —
is dropped (counted per library in the manifest, `near_duplicates_of_eval_dropped`, and logged), so no
eval row has a near-duplicate among the training rows or the other eval rows. Training library: the
eval rows are its IND eval set (held-out functions), the next `train_per_library` (null = all the rest)
of the pairs left its training rows. Held-out library: the eval rows are its OOD eval set; none of it is
ever trained on. Each eval row's candidates
are its own body (index 0) and up to `eval_candidates − 1` bodies of other eval rows of the same
library, so every negative is a docstring of the same library (hard). Queries carry no instruction.

Eval candidates (`eval_negatives`): "library" (the default above), or "bm25": the `eval_candidates − 1` bodies of
the whole eval pool (every library's eval rows) that score highest by Okapi BM25 (datamodules/bm25.py) against the
row's summary — lexically hard negatives, from any library — skipping near-duplicates of the row's own body (the
rule above), in BM25 order after the positive.

Where the pairs come from (`pairs_from`). "snapshot" (the default): the filtered pairs of every default library,
extracted once and shipped with the package (`datamodules/assets/docstrings_pairs.jsonl.gz`, ~2 MB, its content
SHA-256 checked on load), so every machine builds the same rows whatever library versions it has installed; the
deduplication, split and candidates are computed from them as above, so any subset of its libraries and any
split settings work. "installed": extracted from the installed libraries' sources (any installed library; what
the snapshot was made from, `python -m datamodules.builders.docstrings --write-snapshot`).

With "installed" the data depend on what is installed. The manifest records every library's version and a
signature and SHA-256 of the source files read, plus a fingerprint of all rows. On every use the installed
versions and source signatures (file count, total size) are compared with the manifest: a mismatch raises a
`DataError` naming the libraries (`on_change="error"`, the default) or rebuilds with a warning
(`on_change="rebuild"`); passing `fingerprint=` refuses any data whose row fingerprint differs. With "snapshot"
the recorded state is the snapshot's, which does not change unless the shipped file does.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import importlib.metadata
import importlib.resources
import io
import json
import logging
import random
import re
import sys
import sysconfig
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from operations.atomic import build_directory

from ..bm25 import BM25
from ..errors import DataError
from ..schema import RESERVED_TOKENS
from .bundled import EVAL_SCHEMA, TRAIN_SCHEMA

log = logging.getLogger(__name__)

# Bump whenever anything that changes generated rows changes (filters, split, layout).
DOCSTRINGS_VERSION = 3
MANIFEST = "docstrings.json"
TRAIN_SPLIT, EVAL_SPLIT = "original", "test"
#: The standard library's name here; its version is the Python version.
STDLIB = "python"

#: Defaults: four training libraries (each also an IND eval set), three held-out libraries (OOD). All are
#: installed with embedlab's own dependencies (torch brings networkx and sympy; datasets brings pandas).
TRAIN_LIBRARIES: tuple[str, ...] = ("torch", "transformers", "numpy", "pandas")
OOD_LIBRARIES: tuple[str, ...] = (STDLIB, "networkx", "sympy")

SKIP_DIRS = frozenset({"tests", "test", "testing", "_vendor", "vendor", "examples", "benchmarks", "__pycache__"})
STDLIB_SKIP_TOP = frozenset({"site-packages", "dist-packages", "idlelib", "lib2to3", "tkinter", "turtledemo",
                             "ensurepip", "distutils", "pydoc_data"})
SUMMARY_WORDS = (4, 40)
SUMMARY_MAX_CHARS = 200
SUMMARY_MAX_LINES = 3
BODY_MIN_WORDS = 15
#: Near-duplicate bodies (templated docstrings): Jaccard similarity of their word 3-gram sets at least this.
NEAR_DUP_JACCARD = 0.3
PAIRS_FROM = ("snapshot", "installed")
EVAL_NEGATIVES = ("library", "bm25")
#: The shipped pairs (a package asset; found through the package, wherever this module lives).
SNAPSHOT_FILE = "docstrings_pairs.jsonl.gz"
SNAPSHOT_FORMAT = "embedlab.docstrings_pairs.v1"
#: SHA-256 of the snapshot's decompressed content: a changed file is refused, not silently used.
SNAPSHOT_SHA256 = "010ec5886ae1c572ce56a84d1f1c1eefc7bfe8911e8b2f6f73577d1f4b377888"
#: Row fingerprints built from the snapshot (a test rebuilds them): the default settings (`data=docstrings`), and
#: the larger eval of the real-text ablation (conf/experiment/ablation_real.yaml).
SNAPSHOT_FINGERPRINT = "a77d43b5e3eab9b1fa756558a703650b"
ABLATION_FINGERPRINT = "095b7682b963a6e66937baedc9a129ad"

_EXAMPLES_HEADING = re.compile(r"^\s*(examples?|usage)\s*:?\s*$", re.IGNORECASE)
_RULE = re.compile(r"^\s*([-=~^*])\1{2,}\s*$")
_DIRECTIVE = re.compile(r"^\s*\.\.\s+[\w:-]+::")
_NON_WORD = re.compile(r"\W+")


@dataclass(frozen=True)
class DocPair:
    library: str
    qualname: str  # module path + object path, e.g. torch.nn.functional.conv1d
    summary: str
    body: str

    @property
    def order_key(self) -> str:
        return hashlib.sha256(f"{self.library}\0{self.qualname}\0{self.summary}\0{self.body}".encode()).hexdigest()


def normalise(text: str) -> str:
    """The comparison form used by the leakage filter and the deduplication."""
    return _NON_WORD.sub(" ", text.lower()).strip()


# ------------------------------------------------------------------------------------------ sources
def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def library_version(library: str) -> str:
    if library == STDLIB:
        return sys.version.split()[0]
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"library {library!r} is not installed; install it or drop it from the docstrings "
                        "dataset's train_libraries/ood_libraries", dataset=library) from None


def source_files(library: str) -> list[tuple[str, Path]]:
    """(relative path, absolute path) of the library's .py files that are read, sorted by relative path."""
    if library == STDLIB:
        root = _stdlib_root()
        found = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")]
        found = [(rel, p) for rel, p in found if rel.split("/", 1)[0] not in STDLIB_SKIP_TOP]
    else:
        library_version(library)  # a clear error when it is not installed
        dist = importlib.metadata.distribution(library)
        found = [(str(f), Path(dist.locate_file(f))) for f in dist.files or () if str(f).endswith(".py")]
        # RECORD also lists files installed outside site-packages (console scripts under ../../bin).
        found = [(rel, p) for rel, p in found if not rel.startswith("..")]
    kept = []
    for rel, path in found:
        parts = rel.split("/")
        if SKIP_DIRS.intersection(parts[:-1]) or parts[-1] in ("conftest.py", "setup.py"):
            continue
        kept.append((rel, path))
    return sorted(kept)


def source_signature(library: str) -> dict:
    """Cheap check of the installed sources: how many files are read and their total size."""
    files = source_files(library)
    return {"files": len(files), "bytes": sum(p.stat().st_size for _, p in files)}


def _module_name(rel: str) -> str:
    parts = rel[:-3].split("/")
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _documented(tree: ast.Module) -> Iterator[tuple[str, str]]:
    """(object path, docstring) of public functions/classes and public methods of public classes."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield node.name, doc
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                        doc = ast.get_docstring(sub, clean=True)
                        if doc:
                            yield f"{node.name}.{sub.name}", doc


def split_docstring(doc: str, max_body_chars: int) -> tuple[str, str] | None:
    """(summary, body) of a cleaned docstring after the module docstring's filters, or None if rejected."""
    lines = doc.strip().splitlines()
    try:
        blank = next(i for i, line in enumerate(lines) if not line.strip())
    except StopIteration:
        return None  # no body
    if blank > SUMMARY_MAX_LINES:
        return None
    summary = " ".join(" ".join(lines[:blank]).split())
    body_lines = []
    for line in lines[blank + 1:]:
        if line.lstrip().startswith(">>>") or _EXAMPLES_HEADING.match(line):
            break
        if _RULE.match(line) or _DIRECTIVE.match(line):
            continue
        body_lines.append(line)
    body = " ".join(" ".join(body_lines).split())
    if len(body) > max_body_chars:
        cut = body.rfind(" ", 0, max_body_chars + 1)
        body = body[:cut if cut > 0 else max_body_chars]
    words = len(summary.split())
    if not (SUMMARY_WORDS[0] <= words <= SUMMARY_WORDS[1]) or len(summary) > SUMMARY_MAX_CHARS:
        return None
    if not summary[0].isalpha() or len(body.split()) < BODY_MIN_WORDS:
        return None
    if normalise(summary) in normalise(body):
        return None
    if any(token in summary or token in body for token in RESERVED_TOKENS):
        return None
    return summary, body


def extract_library(library: str, max_body_chars: int) -> tuple[list[DocPair], dict]:
    """Every kept (summary, body) pair of one library, before deduplication, and what was read."""
    files = source_files(library)
    digest = hashlib.sha256()
    pairs: list[DocPair] = []
    skipped_files, documented = [], 0
    for rel, path in files:
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(hashlib.sha256(data).digest())
        try:
            tree = ast.parse(data, filename=rel)
        except (SyntaxError, ValueError):  # other Python versions' syntax, or bytes that do not decode
            skipped_files.append(rel)
            continue
        module = _module_name(rel)
        for objpath, doc in _documented(tree):
            documented += 1
            split = split_docstring(doc, max_body_chars)
            if split is not None:
                pairs.append(DocPair(library, f"{module}.{objpath}", *split))
    if skipped_files:
        log.warning("docstrings %s: %d file(s) did not parse and were skipped, e.g. %s", library,
                    len(skipped_files), skipped_files[:3])
    info = {"version": library_version(library), "files": len(files),
            "bytes": sum(p.stat().st_size for _, p in files), "source_sha256": digest.hexdigest(),
            "files_unparsable": len(skipped_files), "documented": documented, "kept_by_filters": len(pairs)}
    return pairs, info


# ------------------------------------------------------------------------------------------ snapshot
def snapshot_path() -> Path:
    return Path(str(importlib.resources.files("datamodules") / "assets" / SNAPSHOT_FILE))


_SNAPSHOT_CACHE: dict[tuple, tuple[dict, list[DocPair]]] = {}


def load_snapshot(path: str | Path | None = None, sha256: str | None = SNAPSHOT_SHA256) -> tuple[dict, list[DocPair]]:
    """(metadata, pairs) of a pairs snapshot; its content must hash to `sha256` (None: not checked)."""
    path = Path(path) if path is not None else snapshot_path()
    if not path.is_file():
        raise DataError(f"the docstrings pairs snapshot {path} is missing (it ships with embedlab: restore it from "
                        "git, or build from the installed libraries with pairs_from=installed)")
    key = (str(path), path.stat().st_mtime_ns, sha256)
    if key not in _SNAPSHOT_CACHE:
        data = gzip.decompress(path.read_bytes())
        digest = hashlib.sha256(data).hexdigest()
        if sha256 is not None and digest != sha256:
            raise DataError(f"the docstrings pairs snapshot {path} has content SHA-256 {digest}, not the {sha256} this "
                            "code was released with: restore the file from git (or, after regenerating it on purpose "
                            "with --write-snapshot, update SNAPSHOT_SHA256 and the fingerprints in "
                            "datamodules/builders/docstrings.py)")
        lines = data.decode("utf-8").splitlines()
        meta = json.loads(lines[0])
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise DataError(f"{path} is not a docstrings pairs snapshot (format {meta.get('format')!r})")
        pairs = [DocPair(*json.loads(line)) for line in lines[1:]]
        _SNAPSHOT_CACHE[key] = (meta, pairs)
    return _SNAPSHOT_CACHE[key]


def write_snapshot(path: str | Path, libraries: Sequence[str] = (*TRAIN_LIBRARIES, *OOD_LIBRARIES),
                   max_body_chars: int = 300) -> str:
    """Extract every library's filtered pairs from the installed sources into a snapshot at `path` (gzip with no
    timestamp: the same pairs give the same bytes). Returns the content SHA-256."""
    infos, lines = {}, []
    for lib in libraries:
        pairs, infos[lib] = extract_library(lib, max_body_chars)
        lines += [json.dumps([p.library, p.qualname, p.summary, p.body], ensure_ascii=False) for p in pairs]
    meta = {"format": SNAPSHOT_FORMAT, "docstrings_version": DOCSTRINGS_VERSION, "max_body_chars": int(max_body_chars),
            "python": sys.version.split()[0], "libraries": infos, "pairs": len(lines)}
    data = ("\n".join([json.dumps(meta, sort_keys=True), *lines]) + "\n").encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as f:
        f.write(data)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buffer.getvalue())
    return hashlib.sha256(data).hexdigest()


def _snapshot_libraries(libraries: Sequence[str], max_body_chars: int) -> dict[str, dict]:
    """The snapshot's record of `libraries` (refusing libraries it lacks or another body length)."""
    meta, _ = load_snapshot()
    missing = [lib for lib in libraries if lib not in meta["libraries"]]
    if missing:
        raise DataError(f"the shipped docstrings snapshot holds {sorted(meta['libraries'])}, not {missing}: choose "
                        "those libraries, or build from the installed ones with pairs_from=installed "
                        "(e.g. docstrings.pairs_from=installed)")
    if int(max_body_chars) != int(meta["max_body_chars"]):
        raise DataError(f"the shipped docstrings snapshot was extracted with max_body_chars={meta['max_body_chars']}, "
                        f"not {max_body_chars}: keep {meta['max_body_chars']}, or use pairs_from=installed")
    return {lib: dict(meta["libraries"][lib]) for lib in libraries}


def deduplicate(pairs: Sequence[DocPair]) -> list[DocPair]:
    """Drop every pair whose normalised summary or body also belongs to another pair."""
    summaries = Counter(normalise(p.summary) for p in pairs)
    bodies = Counter(normalise(p.body) for p in pairs)
    # A body that normalises like some summary would be the same text on both sides of two pairs.
    both = Counter({k: summaries[k] + bodies[k] for k in summaries.keys() & bodies.keys()})
    return [p for p in pairs if summaries[normalise(p.summary)] == 1 and bodies[normalise(p.body)] == 1
            and both[normalise(p.summary)] == 0 and both[normalise(p.body)] == 0]


# ------------------------------------------------------------------------------------------ rows
def eval_rows(pairs: Sequence[DocPair], candidates: int, seed: int) -> list[dict]:
    """MMEB-eval rows: each pair's summary against its body (index 0) and other bodies of `pairs`."""
    rows = []
    for i, pair in enumerate(pairs):
        others = [p.body for j, p in enumerate(pairs) if j != i]
        rng = random.Random(f"{seed}:{pair.library}:{pair.qualname}:{i}")
        negatives = rng.sample(others, min(candidates - 1, len(others)))
        rows.append({"qry_text": pair.summary, "qry_img_path": "", "tgt_text": [pair.body, *negatives],
                     "tgt_img_path": [""] * (1 + len(negatives))})
    return rows


def bm25_eval_rows(evaluation: dict[str, list[DocPair]], candidates: int) -> dict[str, list[dict]]:
    """MMEB-eval rows per library: each eval pair's summary against its body (index 0) and the `candidates − 1`
    highest-BM25 bodies of the whole eval pool (every library's eval rows, in `evaluation` order), skipping the
    row's own body and near-duplicates of it."""
    pool = [p for pairs in evaluation.values() for p in pairs]
    if len(pool) < candidates:
        raise DataError(f"eval_candidates={candidates} but the eval pool holds only {len(pool)} bodies; lower "
                        "eval_candidates or raise eval_per_library")
    index = BM25([p.body for p in pool])
    shingle = [shingles(p.body) for p in pool]
    out: dict[str, list[dict]] = {}
    position = 0
    for lib, pairs in evaluation.items():
        rows = []
        for pair in pairs:
            own = position
            position += 1

            def keep(i: int, own: int = own) -> bool:
                return i != own and not near_duplicates(pool[own], pool[i], shingle[own], shingle[i])

            negatives = [pool[i].body for i in index.top(pair.summary, candidates - 1, keep)]
            rows.append({"qry_text": pair.summary, "qry_img_path": "", "tgt_text": [pair.body, *negatives],
                         "tgt_img_path": [""] * (1 + len(negatives))})
        out[lib] = rows
    return out


def train_rows(pairs: Sequence[DocPair]) -> list[dict]:
    return [{"qry": p.summary, "qry_image_path": "", "pos_text": p.body, "pos_image_path": "", "neg_text": "",
             "neg_image_path": ""} for p in pairs]


def shingles(text: str) -> frozenset[tuple[str, ...]]:
    """Word 3-grams of the normalised text (the whole text when it has fewer than 3 words)."""
    words = normalise(text).split()
    return frozenset(tuple(words[i:i + 3]) for i in range(max(1, len(words) - 2)))


def near_duplicates(a: DocPair, b: DocPair, a_shingles: frozenset, b_shingles: frozenset) -> bool:
    """Two docstrings of one function (a property's getter and setter) or two instances of one template:
    the same qualified name, or a Jaccard similarity of the bodies' word 3-grams ≥ NEAR_DUP_JACCARD."""
    if a.qualname == b.qualname:
        return True
    shared = len(a_shingles & b_shingles)
    return shared >= NEAR_DUP_JACCARD * (len(a_shingles) + len(b_shingles) - shared)


def split_pairs(pairs: Sequence[DocPair], train_libraries: Sequence[str], ood_libraries: Sequence[str],
                eval_per_library: int, train_per_library: int | None) -> tuple[dict, dict, dict]:
    """({train library: training pairs}, {eval dataset: pairs}, {library: near-duplicates of eval rows
    dropped}) — module docstring, "Split"."""
    by_library: dict[str, list[DocPair]] = {lib: [] for lib in (*train_libraries, *ood_libraries)}
    for p in pairs:
        by_library[p.library].append(p)
    train, evaluation, dropped = {}, {}, {}
    for lib, lib_pairs in by_library.items():
        ordered = sorted(lib_pairs, key=lambda p: p.order_key)
        if len(ordered) < 2:
            raise DataError(f"only {len(ordered)} docstring pair(s) survive the filters in library {lib!r}; "
                            "choose another library", dataset=lib)
        chosen: list[tuple[DocPair, frozenset]] = []
        rest: list[DocPair] = []
        dropped[lib] = 0
        for p in ordered:
            sh = shingles(p.body)
            if any(near_duplicates(p, e, sh, esh) for e, esh in chosen):
                dropped[lib] += 1  # a sibling of an eval row: neither a second eval row nor a training leak
            elif len(chosen) < eval_per_library:
                chosen.append((p, sh))
            else:
                rest.append(p)
        evaluation[lib] = [p for p, _ in chosen]
        if lib in train_libraries:
            train[lib] = rest if train_per_library is None else rest[:train_per_library]
            if not train[lib]:
                raise DataError(f"library {lib!r} has {len(ordered)} pairs, all taken by eval_per_library="
                                f"{eval_per_library} or dropped as their near-duplicates: none left to train on",
                                dataset=lib)
        if dropped[lib]:
            log.info("docstrings: %s: %d pair(s) dropped as near-duplicates of its %d eval rows", lib,
                     dropped[lib], len(chosen))
    return train, evaluation, dropped


def rows_fingerprint(train: dict[str, list[dict]], evaluation: dict[str, list[dict]]) -> str:
    h = hashlib.sha256()
    for kind, tables in (("train", train), ("eval", evaluation)):
        for name in sorted(tables):
            h.update(f"{kind}\0{name}\0".encode())
            for row in tables[name]:
                h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------------------ build
def _settings(train_libraries, ood_libraries, eval_per_library, train_per_library, eval_candidates,
              max_body_chars, seed, pairs_from: str = "installed", eval_negatives: str = "library") -> dict:
    out = {"version": DOCSTRINGS_VERSION, "train_libraries": list(train_libraries),
           "ood_libraries": list(ood_libraries), "eval_per_library": int(eval_per_library),
           "train_per_library": None if train_per_library is None else int(train_per_library),
           "eval_candidates": int(eval_candidates), "max_body_chars": int(max_body_chars), "seed": int(seed)}
    # Snapshot and BM25 are recorded only when used, so earlier builds keep their settings (and are reused).
    if pairs_from == "snapshot":
        out["pairs_from"] = f"snapshot:{SNAPSHOT_SHA256}"
    if eval_negatives != "library":
        out["eval_negatives"] = eval_negatives
    return out


def installed_state(libraries: Sequence[str]) -> dict[str, dict]:
    """What the manifest's `libraries` entries are compared with on every use (versions and signatures)."""
    return {lib: {"version": library_version(lib), **source_signature(lib)} for lib in libraries}


def snapshot_state(libraries: Sequence[str], max_body_chars: int) -> dict[str, dict]:
    """The snapshot's versions and signatures of `libraries` (what a snapshot build's manifest records)."""
    return {lib: {k: info[k] for k in ("version", "files", "bytes")}
            for lib, info in _snapshot_libraries(libraries, max_body_chars).items()}


def _readme(title: str, names: Sequence[str], split: str) -> str:
    lines = ["---", "configs:"]
    for name in names:
        lines += [f"- config_name: {name}", "  data_files:", f"  - split: {split}",
                  f"    path: {name}/{split}-*.parquet"]
    lines += ["---", f"# {title}", "", "Docstring pairs (summary → body) of installed Python libraries, built "
              f"offline by `datamodules/builders/docstrings.py` (version {DOCSTRINGS_VERSION}); see ../{MANIFEST}.", ""]
    return "\n".join(lines)


def _write(rows: list[dict], schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def build(out: Path, settings: dict) -> dict:
    """Extract, filter, deduplicate, split and write everything into the empty directory `out`."""
    start = time.perf_counter()
    libraries = [*settings["train_libraries"], *settings["ood_libraries"]]
    extracted, infos = [], {}
    if str(settings.get("pairs_from", "installed")).startswith("snapshot"):
        infos = _snapshot_libraries(libraries, settings["max_body_chars"])
        wanted = set(libraries)
        extracted = [p for p in load_snapshot()[1] if p.library in wanted]
    else:
        for lib in libraries:
            pairs, infos[lib] = extract_library(lib, settings["max_body_chars"])
            extracted += pairs
    unique = deduplicate(extracted)
    kept = Counter(p.library for p in unique)
    for lib in libraries:
        infos[lib]["kept_after_dedup"] = kept[lib]
    train, evaluation, dropped = split_pairs(unique, settings["train_libraries"], settings["ood_libraries"],
                                             settings["eval_per_library"], settings["train_per_library"])
    for lib in libraries:
        infos[lib]["near_duplicates_of_eval_dropped"] = dropped[lib]
    train_tables = {lib: train_rows(pairs) for lib, pairs in train.items()}
    if settings.get("eval_negatives", "library") == "bm25":
        eval_tables = bm25_eval_rows(evaluation, settings["eval_candidates"])
    else:
        eval_tables = {lib: eval_rows(pairs, settings["eval_candidates"], settings["seed"])
                       for lib, pairs in evaluation.items()}
    for lib, rows in train_tables.items():
        _write(rows, TRAIN_SCHEMA, out / "train" / lib / f"{TRAIN_SPLIT}-00000-of-00001.parquet")
    for lib, rows in eval_tables.items():
        _write(rows, EVAL_SCHEMA, out / "eval" / lib / f"{EVAL_SPLIT}-00000-of-00001.parquet")
    (out / "train" / "README.md").write_text(_readme("embedlab docstrings: MMEB-train layout", list(train_tables),
                                                     TRAIN_SPLIT))
    (out / "eval" / "README.md").write_text(_readme("embedlab docstrings: MMEB-eval layout", list(eval_tables),
                                                    EVAL_SPLIT))
    manifest = {
        "format": "embedlab.docstrings", "settings": settings, "python": sys.version.split()[0],
        "libraries": infos, "fingerprint": rows_fingerprint(train_tables, eval_tables),
        "train_rows": {lib: len(rows) for lib, rows in train_tables.items()},
        "eval_rows": {lib: len(rows) for lib, rows in eval_tables.items()},
        "eval_split": {lib: "IND" if lib in settings["train_libraries"] else "OOD" for lib in eval_tables},
        "eval_candidates": {lib: sorted({len(r["tgt_text"]) for r in rows}) for lib, rows in eval_tables.items()},
        # Expected score of a random ranker (percent): mean over rows of 1 / #candidates.
        "eval_chance": {lib: round(100 * sum(1 / len(r["tgt_text"]) for r in rows) / len(rows), 3)
                        for lib, rows in eval_tables.items()},
        "build_seconds": round(time.perf_counter() - start, 1),
    }
    # Written last: its presence marks a complete build.
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _changes(manifest: dict, state: dict[str, dict]) -> list[str]:
    changed = []
    for lib, now in state.items():
        then = manifest.get("libraries", {}).get(lib, {})
        recorded = {k: then.get(k) for k in now}
        if recorded != now:
            changed.append(f"{lib} {recorded} → installed {now}")
    return changed


def _check_fingerprint(manifest: dict, fingerprint: str | None, root: Path) -> None:
    if fingerprint is not None and manifest["fingerprint"] != fingerprint:
        versions = {lib: info["version"] for lib, info in manifest["libraries"].items()}
        raise DataError(f"the docstrings data at {root} has fingerprint {manifest['fingerprint']}, but "
                        f"fingerprint={fingerprint} was asked for: the installed libraries give other rows "
                        f"(versions {versions}). Install the versions the expected data was built with, or "
                        "drop the fingerprint to accept these rows")


def ensure_docstrings(root, *, train_libraries: Sequence[str] = TRAIN_LIBRARIES,
                      ood_libraries: Sequence[str] = OOD_LIBRARIES, eval_per_library: int = 100,
                      train_per_library: int | None = 600, eval_candidates: int = 100, max_body_chars: int = 300,
                      seed: int = 0, on_change: str = "error", fingerprint: str | None = None,
                      pairs_from: str = "snapshot", eval_negatives: str = "library", force: bool = False) -> Path:
    """Make sure `root` holds the docstrings dataset for these settings and pairs (`pairs_from`: the shipped
    snapshot, or the installed libraries); build it if absent (or settings differ). Returns `root`.

    Library versions or sources that differ from the ones recorded: `on_change="error"` raises a
    `DataError` naming them, `"rebuild"` rebuilds (logged). `fingerprint`: refuse data whose row
    fingerprint differs (a new build is then not swapped in). Builds happen in a temporary sibling
    directory renamed into place under an exclusive flock on `<root>.lock`.
    """
    if on_change not in ("error", "rebuild"):
        raise ValueError(f"on_change must be 'error' or 'rebuild', got {on_change!r}")
    if pairs_from not in PAIRS_FROM or eval_negatives not in EVAL_NEGATIVES:
        raise ValueError(f"pairs_from must be one of {PAIRS_FROM} and eval_negatives one of {EVAL_NEGATIVES}, got "
                         f"{pairs_from!r} and {eval_negatives!r}")
    overlap = set(train_libraries) & set(ood_libraries)
    if overlap or not train_libraries or not ood_libraries:
        raise ValueError(f"train_libraries and ood_libraries must be non-empty and disjoint, got {list(train_libraries)} "
                         f"and {list(ood_libraries)}")
    if eval_per_library < 1 or eval_candidates < 2 or (train_per_library is not None and train_per_library < 1):
        raise ValueError("eval_per_library and train_per_library must be ≥ 1 and eval_candidates ≥ 2, got "
                         f"{eval_per_library}, {train_per_library}, {eval_candidates}")
    root = Path(root).expanduser().absolute()
    settings = _settings(train_libraries, ood_libraries, eval_per_library, train_per_library, eval_candidates,
                         max_body_chars, seed, pairs_from, eval_negatives)
    libraries = [*train_libraries, *ood_libraries]
    state = snapshot_state(libraries, max_body_chars) if pairs_from == "snapshot" else installed_state(libraries)

    def usable(manifest: dict | None) -> bool:
        if force or manifest is None or manifest.get("settings") != settings:
            return False
        changed = _changes(manifest, state)
        if changed and on_change == "error":
            raise DataError(f"the docstrings data at {root} was built from other library sources than the ones "
                            f"installed now ({'; '.join(changed)}): its rows would change (fingerprint "
                            f"{manifest['fingerprint']}). Rebuild on purpose with on_change=rebuild "
                            "(e.g. data.bundled.on_change=rebuild), or reinstall the recorded versions")
        if changed:
            log.warning("docstrings: installed sources changed (%s); rebuilding %s", "; ".join(changed), root)
            return False
        _check_fingerprint(manifest, fingerprint, root)
        return True

    if usable(_read_manifest(root)):
        return root
    built: dict = {}

    def build_checked(tmp: Path) -> None:
        built.update(build(tmp, settings))
        _check_fingerprint(built, fingerprint, root)  # a refused build is never swapped in

    # usable(): another process may have finished the same build while we waited for the lock.
    if not build_directory(root, lambda: usable(_read_manifest(root)), build_checked, marker=MANIFEST,
                           what="docstrings dataset"):
        return root
    log.info("docstrings dataset built at %s (fingerprint %s)", root, built["fingerprint"])
    return root


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build the docstrings retrieval dataset (MMEB layouts) offline.")
    ap.add_argument("--root", default="data/docstrings")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--on-change", default="error", choices=("error", "rebuild"))
    ap.add_argument("--pairs-from", default="snapshot", choices=PAIRS_FROM)
    ap.add_argument("--write-snapshot", default=None, metavar="PATH",
                    help="extract the default libraries' pairs from the installed sources into a snapshot at PATH "
                         f"(the shipped one: {snapshot_path()}), print its SHA-256, and exit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.write_snapshot:
        digest = write_snapshot(args.write_snapshot)
        print(f"snapshot written to {args.write_snapshot}: content SHA-256 {digest} (set SNAPSHOT_SHA256 to it)")
        return 0
    start = time.perf_counter()
    root = ensure_docstrings(args.root, force=args.force, on_change=args.on_change, pairs_from=args.pairs_from)
    m = json.loads((root / MANIFEST).read_text())
    print(f"docstrings dataset at {root} [{time.perf_counter() - start:.1f}s], fingerprint {m['fingerprint']}")
    for lib, info in m["libraries"].items():
        print(f"  {lib:<14} {info['version']:<16} documented {info['documented']:>6}  kept {info['kept_by_filters']:>5}"
              f"  after dedup {info['kept_after_dedup']:>5}  train {m['train_rows'].get(lib, 0):>5}  "
              f"eval {m['eval_rows'][lib]:>4} ({m['eval_split'][lib]}, candidates {m['eval_candidates'][lib]}, "
              f"chance {m['eval_chance'][lib]:.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
