"""Metrics history that survives restarts, and the run's summary lines.

Lightning's CSVLogger deletes an existing `metrics.csv` when a run restarts in its directory, so a resumed
run would keep only the steps after the resume. `ResumableCSVLogger` appends instead. Rows that an
interrupted attempt logged after the checkpoint the run resumes from are logged again by the resumed
attempt; `rewind(step)` moves them to `metrics.superseded.csv` (nothing is deleted), so `metrics.csv` holds
each step once, in order.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

log = logging.getLogger(__name__)

SUPERSEDED = "metrics.superseded.csv"


class _AppendingWriter(ExperimentWriter):
    """An ExperimentWriter that keeps the rows of an existing metrics.csv and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _write(path: Path, fields: list[str], rows: list[dict], append: bool = False) -> None:
    exists = append and path.is_file()
    if exists:
        old_fields, old_rows = _read(path)
        fields = old_fields + [f for f in fields if f not in old_fields]
        rows = old_rows + rows
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _step(row: dict) -> float | None:
    try:
        return float(row.get("step", ""))
    except ValueError:
        return None


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a restart in the same directory (rows appended, never deleted)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def rewind(self, step: int) -> int:
        """Move the rows logged after a checkpoint of `step` optimizer steps (by an attempt interrupted after
        it) to metrics.superseded.csv; returns how many moved. Call before the resumed attempt logs.
        Lightning logs the rows of the n-th step (and of the validation after it) with step n − 1, so the
        rows of the checkpointed steps are those with step < `step`."""
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        if not path.is_file():
            return 0
        fields, rows = _read(path)
        keep = [r for r in rows if (_step(r) is None or _step(r) < step)]
        later = [r for r in rows if not (_step(r) is None or _step(r) < step)]
        if later:
            _write(path.with_name(SUPERSEDED), fields, later, append=True)
            _write(path, fields, keep)
            log.info("%s: %d row(s) logged after step %d by the interrupted attempt moved to %s (the resumed run "
                     "logs those steps again)", path, len(later), step, SUPERSEDED)
        return len(later)


def append_summary(path: str | os.PathLike, line: str) -> None:
    """Append one line to the run's summary.txt (earlier attempts' lines are kept)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
