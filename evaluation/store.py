"""Per-dataset evaluation outputs and resumption: `<dataset>_score.json` and `<dataset>_pred.jsonl` in the
output directory (the reference evaluators' file names), each score file carrying the fingerprint of what
produced it, so a re-run into the same directory scores only what is missing or stale.

"Same model" = same fingerprint of all three:
- model: every tensor of the Embedder's state dict (name, dtype, shape, bytes: LoRA adapters, a changed
  norm weight or another inference dtype all change it) and its spec (family, pooling, normalisation,
  prompt, max_length, image settings);
- data: the dataset's name, meta-task, split, candidate side, image root and every row's query and
  candidates (text and image path) — `max_rows` or a fixed row changes it; for MMEB-V2 datasets also the
  modality, headline metric, frame sampling, videos/pages of every item, and a corpus task's queries, corpus
  and graded qrels;
- settings: what decides a score from embeddings (tie rule, tie and collapse tolerances, the scoring
  version). Batch size, workers, devices and sorting change no score and are not part of it.
Any difference re-scores the dataset (and says which part differed); nothing is reused on a guess.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from embedders.diagnostics import DEFAULT_COLLAPSE_TOLERANCE
from operations.atomic import respect_umask
from operations.disk_space import disk_full_error, is_disk_full

from .scoring import DEFAULT_TIE_TOLERANCE, TIE_RULES

log = logging.getLogger(__name__)

#: Bump when a change to the protocol changes scores, so old score files are not reused.
SCORING_VERSION = 2


@dataclass(frozen=True)
class EvalSettings:
    """What decides a score from embeddings (fingerprinted) and how the run goes (not fingerprinted)."""

    tie_rule: str = "first"
    tie_tolerance: float = DEFAULT_TIE_TOLERANCE
    collapse_tolerance: float = DEFAULT_COLLAPSE_TOLERANCE
    #: Flag a dataset in the table when the tie rule decides at least this share of its rows.
    tie_flag_share: float = 0.01
    #: Documents stored quantised (int8 | binary), scored in two stages with rescoring (evaluation/quantization.py).
    quantize: str | None = None
    #: Stage-1 candidates re-scored per result asked for (sentence-transformers' rescore_multiplier; null = 2).
    rescore_multiplier: float | None = None
    #: Multi-vector documents token-pooled to about 1/factor of their vectors (embedders/token_pooling.py).
    token_pooling: float | None = None

    def __post_init__(self):
        if self.tie_rule not in TIE_RULES:
            raise ValueError(f"eval.tie_rule must be one of {TIE_RULES}, got {self.tie_rule!r}")
        for key in ("tie_tolerance", "collapse_tolerance", "tie_flag_share"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"eval.{key} must be a non-negative number, got {value!r}")

    @classmethod
    def from_config(cls, cfg: Mapping) -> EvalSettings:
        return cls(**{k: cfg[k] for k in ("tie_rule", "tie_tolerance", "collapse_tolerance", "tie_flag_share",
                                          "quantize", "rescore_multiplier", "token_pooling")
                      if cfg.get(k) is not None})

    def fingerprint(self) -> str:
        # tie_flag_share is a display threshold only; the index settings count only when set (older score files keep
        # their fingerprints).
        fields = {k: v for k, v in asdict(self).items()
                  if k != "tie_flag_share" and not (k in ("quantize", "rescore_multiplier", "token_pooling") and v is None)}
        return _digest(json.dumps({**fields, "scoring_version": SCORING_VERSION}, sort_keys=True).encode())

    def rules_fingerprint(self) -> str:
        """The scoring rules alone (tie rule, tolerances, scoring version), without the index options (quantize,
        rescore_multiplier, token_pooling): two evaluations with equal rules are comparable row by row even when their
        indexes differ (compare.py pairs a quantised index with the float32 one)."""
        fields = {k: getattr(self, k) for k in ("tie_rule", "tie_tolerance", "collapse_tolerance")}
        return _digest(json.dumps({**fields, "scoring_version": SCORING_VERSION}, sort_keys=True).encode())


def _digest(*chunks: bytes) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()[:32]


def model_fingerprint(embedder) -> str:
    """sha256 of the Embedder's spec and of every tensor of its state dict (read once, ~1–2 GB/s)."""
    start = time.perf_counter()
    h = hashlib.sha256()
    spec = embedder.spec() if hasattr(embedder, "spec") else {"class": type(embedder).__name__}
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    total = 0
    for name, tensor in sorted(embedder.state_dict().items()):
        h.update(f"\x00{name}\x00{tensor.dtype}\x00{tuple(tensor.shape)}\x00".encode())
        if tensor.device.type == "meta":
            continue
        data = tensor.detach().reshape(-1).contiguous().cpu()
        total += data.numel() * data.element_size()
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    log.info("model fingerprint over %.3g GB of weights in %.1f s", total / 1e9, time.perf_counter() - start)
    return h.hexdigest()[:32]


def dataset_fingerprint(ds) -> str:
    h = hashlib.sha256()
    root = str(Path(ds.image_root).resolve()) if ds.image_root else ""
    h.update(json.dumps([ds.name, ds.meta_task, ds.split, ds.candidate_side, root]).encode())
    v2 = getattr(ds, "modality", None) is not None
    if v2:  # MMEB v1 fingerprints stay as they were
        h.update(json.dumps(["v2", ds.modality, ds.metric, ds.num_frames, ds.max_frames_saved]).encode())
        if getattr(ds, "frame_saving", "spread") != "spread":
            h.update(json.dumps(["frame_saving", ds.frame_saving]).encode())
        if getattr(ds, "candidate_num_frames", None) is not None:
            h.update(json.dumps(["candidate_num_frames", ds.candidate_num_frames]).encode())

    def item(it) -> list:
        if not v2:
            return [it.text, it.image]
        out = [it.text, it.image, it.video, list(it.pages)]
        return out + [it.instruction] if it.instruction is not None else out

    for r in ds.rows:
        row = [r.row, *item(r.query), [item(c) for c in r.candidates]]
        if r.relevant != (0,):  # several correct candidates (MMEB-V2); other rows keep their fingerprints
            row.append(list(r.relevant))
        h.update(json.dumps(row, ensure_ascii=False).encode())
        h.update(b"\n")
    task = getattr(ds, "task", None)
    if task is not None:
        h.update(json.dumps([list(task.query_ids), [item(q) for q in task.queries], list(task.corpus_ids),
                             [item(c) for c in task.corpus], {q: dict(sorted(g.items())) for q, g in
                                                              sorted(task.qrels.items())}],
                            ensure_ascii=False).encode())
    return h.hexdigest()[:32]


def safe_name(name: str) -> str:
    """A dataset name as a file name (MMEB names are already safe; path separators are not)."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", name)


def atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename: an interrupted run never leaves half a score file, and a full disk
    raises `DiskFullError` naming the file and the space it needs while the file written before stays intact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if is_disk_full(err):
            raise disk_full_error(path, len(text.encode()), err, "result file") from err
        raise
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        respect_umask(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and is_disk_full(err):
            raise disk_full_error(path, len(text.encode()), err, "result file") from err
        raise


class ScoreStore:
    """The per-dataset files of one output directory."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def score_path(self, dataset: str) -> Path:
        return self.directory / f"{safe_name(dataset)}_score.json"

    def pred_path(self, dataset: str) -> Path:
        return self.directory / f"{safe_name(dataset)}_pred.jsonl"

    def load(self, dataset: str, fingerprint: Mapping[str, str]) -> dict | None:
        """The stored result entry when it was made with exactly `fingerprint`, else None (with the reason
        logged when a file was there)."""
        path = self.score_path(dataset)
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("%s: cannot read %s (%s); scoring it again", dataset, path, err)
            return None
        old = stored.get("fingerprint") or {}
        differ = [k for k in ("model", "data", "settings") if old.get(k) != fingerprint.get(k)]
        if differ:
            log.warning("%s: %s was made with another %s; scoring it again (the file will be replaced)",
                        dataset, path.name, "/".join(differ))
            return None
        if not self.pred_path(dataset).is_file():
            log.warning("%s: %s is missing; scoring it again", dataset, self.pred_path(dataset).name)
            return None
        return stored.get("result")

    def save(self, dataset: str, result: Mapping, predictions: list[dict], fingerprint: Mapping[str, str],
             label: str) -> None:
        n = int(result["num_queries"])
        correct = int(round(result["precision@1"] * n / 100))
        record = {
            # The reference evaluators' keys (fractions): VLM2Vec v1 `acc`, V2 `hit@1`.
            "acc": correct / n if n else 0.0, "hit@1": correct / n if n else 0.0,
            "num_correct": correct, "num_pred": n, "num_data": n,
            **dict(result.get("metrics") or {}),   # MMEB-V2: every metric of the reference's score file
            "dataset": dataset, "model": label, "result": dict(result),
            "fingerprint": dict(fingerprint), "scored_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write(self.pred_path(dataset), "".join(json.dumps(p) + "\n" for p in predictions))
        atomic_write(self.score_path(dataset), json.dumps(record, indent=2) + "\n")  # last: marks it complete
