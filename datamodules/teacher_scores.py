"""Teacher-score files: a teacher's scores of each training row's candidates, written beside the data by
`python mine.py mining.method=teacher` (mining/teacher.py) and read by the DataModule for `loss=distill`.

One JSON file per subset, `<dir>/<subset>.teacher.json`: a header that identifies what was scored (format, subset,
split, source, row count and fingerprint of the rows as read, a fingerprint of every row's candidates, the
settings, the teacher, its prompt) and one line per row, `[row, [candidate keys], [scores]]`. A candidate is
named by its `Item.key` (text + visual identity), which is also the `target_keys` entry of a batch column holding
it, so the loss finds each scored candidate among the batch's targets wherever it sits. Data code only: no model.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from operations.atomic import respect_umask

from .errors import DataError
from .schema import TrainPair

FORMAT = "embedlab.teacher_scores.v1"
SUFFIX = ".teacher.json"
#: Header fields that must equal the ones a re-run would write for the file to be reused.
IDENTITY = ("format", "subset", "split", "source", "num_rows", "fingerprint", "candidates_fingerprint", "settings",
            "teacher", "prompt")


def teacher_file_path(directory: str | os.PathLike, subset: str) -> Path:
    return Path(directory) / f"{subset}{SUFFIX}"


def own_candidates(pair: TrainPair) -> list:
    """The candidates every row is scored on: its positive, then its negatives (duplicates of earlier ones left out)."""
    seen, out = set(), []
    for item in (pair.positive, *pair.negatives):
        if item.key not in seen:
            seen.add(item.key)
            out.append(item)
    return out


def candidates_fingerprint(pairs: Sequence[TrainPair]) -> str:
    """Digest of every row's own candidates (positive and negatives): detects re-mined negatives, which
    `rows_fingerprint` (query and positive only) does not see."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.row}:{','.join(str(it.key) for it in own_candidates(p))};".encode())
    return h.hexdigest()[:32]


def teacher_file_header(subset: str, info: Mapping[str, Any], pairs: Sequence[TrainPair], *,
                        settings: Mapping[str, Any], teacher: Mapping[str, Any],
                        prompt: Mapping[str, Any] | None) -> dict:
    """The identifying header of the teacher scores of `subset` (rows `pairs`, described by `info`)."""
    return {"format": FORMAT, "subset": subset, "split": info["split"], "source": info["source"],
            "num_rows": int(info["num_rows"]), "fingerprint": info["fingerprint"],
            "candidates_fingerprint": candidates_fingerprint(pairs), "settings": dict(settings),
            "teacher": dict(teacher), "prompt": dict(prompt) if prompt is not None else None}


def header_differences(path: str | os.PathLike, header: Mapping[str, Any]) -> list[str] | None:
    """How the file at `path` differs from `header` ([] = up to date), or None when there is no readable file."""
    try:
        with open(path) as f:
            old = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    if not isinstance(old, dict):
        return None
    return [f"{k}: {old.get(k)!r} → {header.get(k)!r}" for k in IDENTITY if old.get(k) != header.get(k)]


def write_teacher_file(path: str | os.PathLike, header: Mapping[str, Any],
                       rows: Sequence[tuple[int, Sequence[int], Sequence[float]]], stats: Mapping[str, Any]) -> Path:
    """Write atomically (temporary file + rename): line 1 the header (+ created, stats), then one row per line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = {**header, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "stats": dict(stats), "rows": len(rows)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(head) + "\n")
            for row, keys, scores in rows:
                f.write(json.dumps([int(row), [int(k) for k in keys], [float(s) for s in scores]]) + "\n")
            f.flush()
            os.fsync(f.fileno())
        respect_umask(tmp)  # mkstemp makes it 0600; shared outputs must be readable as any file written there
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _command(directory: Path) -> str:
    return f"python mine.py mining.method=teacher mining.out_dir={directory}"


def read_teacher_file(path: str | os.PathLike, subset: str, info: Mapping[str, Any],
                      pairs: Sequence[TrainPair]) -> dict[int, tuple[tuple[int, ...], tuple[float, ...]]]:
    """{row: (candidate keys, scores)} of one subset, checked against the rows as read now (`info`, `pairs`).

    Refused with a DataError naming the file, row and field: a missing or unreadable file, another subset, split,
    row count or fingerprint, other candidates (re-mined negatives), a row of `pairs` without scores, a row whose
    scores omit its positive, repeated candidates, non-finite scores."""
    path = Path(path)

    def refuse(message: str, row: int | None = None, field: str | None = None):
        raise DataError(f"teacher scores {path}: {message}. Score this data with `{_command(path.parent)} "
                        "mining.force=true` (and the same data config as training)", dataset=subset, row=row,
                        field=field)

    if not path.is_file():
        raise DataError(f"no teacher scores {path}. Score the training rows with `{_command(path.parent)}` (with the "
                        "same data config as training), or point data.teacher_scores at the directory that holds "
                        "them", dataset=subset)
    try:
        lines = path.read_text().splitlines()
        header = json.loads(lines[0])
        body = [json.loads(line) for line in lines[1:] if line.strip()]
    except (OSError, ValueError, IndexError) as e:
        refuse(f"cannot be read ({type(e).__name__}: {e})")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        refuse(f"format is {header.get('format') if isinstance(header, dict) else None!r}, expected {FORMAT!r}",
               field="format")
    for field, want in (("subset", subset), ("split", info.get("split")), ("source", info.get("source")),
                        ("num_rows", info.get("num_rows")), ("fingerprint", info.get("fingerprint")),
                        ("candidates_fingerprint", candidates_fingerprint(pairs))):
        if header.get(field) != want:
            refuse(f"it was scored from other rows ({field} {header.get(field)!r}, the data as read now has {want!r})",
                   field=field)
    table: dict[int, tuple[tuple[int, ...], tuple[float, ...]]] = {}
    for entry in body:
        if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], int)
                and isinstance(entry[1], list) and isinstance(entry[2], list) and len(entry[1]) == len(entry[2])):
            refuse(f"malformed row entry {str(entry)[:80]}")
        row, keys, scores = entry
        if len(set(keys)) != len(keys):
            refuse("a candidate is listed twice", row=row, field="keys")
        if not all(isinstance(s, (int, float)) and math.isfinite(s) for s in scores):
            refuse("a score is not a finite number", row=row, field="scores")
        table[row] = (tuple(int(k) for k in keys), tuple(float(s) for s in scores))
    for pair in pairs:
        if pair.row not in table:
            refuse("this row has no scores", row=pair.row)
        if pair.positive.key not in table[pair.row][0]:
            refuse("its scores do not include the row's positive", row=pair.row, field="keys")
    return table


def load_teacher_scores(directory: str | os.PathLike, subsets: Mapping[str, Sequence[TrainPair]],
                        subset_info: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[tuple[int, ...], tuple[float, ...]]]:
    """{pair uid: (candidate keys, scores)} for every row of `subsets` (as read), from `directory`."""
    out = {}
    for subset, pairs in subsets.items():
        table = read_teacher_file(teacher_file_path(directory, subset), subset, subset_info[subset], pairs)
        out.update({f"{subset}/{row}": value for row, value in table.items()})
    return out


def teacher_tensors(pairs: Sequence[TrainPair], scores: Mapping[str, tuple[Sequence[int], Sequence[float]]]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [B, K] int64 with -1 padding, scores [B, K] float64) of a batch's rows, for the loss."""
    missing = [p for p in pairs if p.uid not in scores]
    if missing:
        raise DataError("no teacher scores for this row (data.teacher_scores was scored from other rows); re-score "
                        "with python mine.py mining.method=teacher", dataset=missing[0].subset, row=missing[0].row)
    width = max(len(scores[p.uid][0]) for p in pairs) if pairs else 0
    keys = torch.full((len(pairs), width), -1, dtype=torch.long)
    values = torch.zeros((len(pairs), width), dtype=torch.float64)
    for i, p in enumerate(pairs):
        k, s = scores[p.uid]
        keys[i, : len(k)] = torch.tensor(k, dtype=torch.long)
        values[i, : len(s)] = torch.tensor(s, dtype=torch.float64)
    return keys, values
