"""Teacher scores for distillation (METHODS §11): `python mine.py mining.method=teacher` scores each training row's
candidates — its positive, its negatives (mined ones when the data is a mined dataset), and optionally `in_batch`
other positives of its subset (the in-batch candidates a batch may put beside it) — with a teacher, and writes them
beside the data (`datamodules.teacher_scores`: one file per subset, fingerprinted by the rows, their candidates,
the settings and the teacher).

Teachers: an embedder of this project (the mining embedder: embedder_dir / ckpt_path / model; the score is the
cosine similarity of the query side and the target side, as training scores) or a cross-encoder / reranker loaded
with sentence-transformers' `CrossEncoder` (`mining.teacher.cross_encoder`; its raw logit, text only). A subset
whose file is up to date is reused (a re-run, or a run resumed after an interruption, scores only what is missing);
a file scored with other settings, teacher or rows is refused unless `mining.force=true`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datamodules.images import ImageLoader
from datamodules.schema import Item, TrainPair
from datamodules.teacher_scores import (
    header_differences,
    own_candidates,
    teacher_file_header,
    teacher_file_path,
    write_teacher_file,
)
from evaluation.encoding import encode_unique

log = logging.getLogger(__name__)


def row_candidates(pairs: Sequence[TrainPair], in_batch: int, rng: np.random.Generator) -> list[list[Item]]:
    """Each row's candidates: its own (positive first, then negatives), then up to `in_batch` other distinct
    positives of the subset, drawn without replacement (all of them when there are no more)."""
    positives = list(dict.fromkeys(p.positive for p in pairs))
    out = []
    for pair in pairs:
        own = own_candidates(pair)
        if in_batch:
            taken = {it.key for it in own}
            others = [it for it in positives if it.key not in taken]
            if len(others) > in_batch:
                others = [others[i] for i in sorted(rng.choice(len(others), size=in_batch, replace=False))]
            own = own + others
        out.append(own)
    return out


class EmbedderTeacher:
    """An embedder of this project as teacher: cosine of the query-side and target-side embeddings."""

    def __init__(self, embedder, description: Mapping[str, Any], batch_size: int = 64, num_workers: int = 0,
                 progress: bool = False):
        self.embedder, self.batch_size, self.num_workers, self.progress = embedder, batch_size, num_workers, progress
        self.description = {"kind": "embedder", **dict(description)}
        self.prompt = embedder.prompt.to_dict()

    def score(self, pairs: Sequence[TrainPair], candidates: Sequence[Sequence[Item]], image_loader: ImageLoader
              ) -> list[list[float]]:
        index: dict[Item, int] = {}
        entries = []
        for pair, items in zip(pairs, candidates):
            for it in items:
                if it not in index:
                    index[it] = len(index)
                    # the image of a candidate resolves under the same image root whichever row it came from
                    entries.append((it, pair.subset, pair.row, "pos_image_path", image_loader))
        queries = [(p.query, p.subset, p.row, "qry_image_path", image_loader) for p in pairs]
        q = encode_unique(self.embedder, queries, "query", self.batch_size, self.num_workers, self.progress)
        c = encode_unique(self.embedder, entries, "target", self.batch_size, self.num_workers, self.progress)
        q = torch.nn.functional.normalize(q.double(), dim=-1)
        c = torch.nn.functional.normalize(c.double(), dim=-1)
        return [[float(q[i] @ c[index[it]]) for it in items] for i, items in enumerate(candidates)]


class CrossEncoderTeacher:
    """A sentence-transformers `CrossEncoder` (reranker) as teacher: its raw logit for (query text, candidate text)."""

    def __init__(self, path: str, device: str | None = None, batch_size: int = 64, max_length: int | None = None,
                 progress: bool = False):
        from sentence_transformers import CrossEncoder

        local = Path(path)
        self.model = CrossEncoder(str(local.resolve()) if local.exists() else path, device=device,
                                  max_length=max_length)
        num_labels = getattr(self.model.config, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(f"mining.teacher.cross_encoder={path} has {num_labels} output labels; a teacher needs one "
                             "relevance score per (query, candidate) pair (a reranker with num_labels=1)")
        self.batch_size, self.progress = batch_size, progress
        self.description = {"kind": "cross_encoder", "path": str(local.resolve()) if local.exists() else path,
                            "max_length": max_length}
        self.prompt = None

    def score(self, pairs: Sequence[TrainPair], candidates: Sequence[Sequence[Item]], image_loader: ImageLoader
              ) -> list[list[float]]:
        inputs = []
        for pair, items in zip(pairs, candidates):
            for name, it in (("qry", pair.query), *(("candidate", c) for c in items)):
                if it.has_visual:
                    raise ValueError(f"subset {pair.subset!r}, row {pair.row}: the {name} has an image or video, but a "
                                     "CrossEncoder teacher reads text only; score this data with an embedder teacher "
                                     "(drop mining.teacher.cross_encoder: embedder_dir=/model= names it)")
            inputs += [(pair.query.text, c.text) for c in items]
        logits = self.model.predict(inputs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                    convert_to_numpy=True, show_progress_bar=self.progress)
        logits = np.asarray(logits, dtype=np.float64).reshape(-1)
        out, at = [], 0
        for items in candidates:
            out.append(logits[at : at + len(items)].tolist())
            at += len(items)
        return out


def mine_teacher_scores(teacher, subsets: Mapping[str, Sequence[TrainPair]],
                        subset_info: Mapping[str, Mapping[str, Any]], image_loader: ImageLoader, out_dir: str | Path, *,
                        in_batch: int = 0, seed: int = 0, force: bool = False) -> list[dict]:
    """Score every subset's rows with `teacher` into `out_dir`; returns one summary row per subset. Up-to-date files
    are reused; files scored otherwise are refused unless `force`."""
    if isinstance(in_batch, bool) or not isinstance(in_batch, int) or in_batch < 0:
        raise ValueError(f"mining.teacher.in_batch must be a non-negative integer, got {in_batch!r}")
    out_dir = Path(out_dir)
    settings = {"in_batch": int(in_batch), "seed": int(seed) if in_batch else None}
    headers = {s: teacher_file_header(s, subset_info[s], pairs, settings=settings, teacher=teacher.description,
                                      prompt=teacher.prompt) for s, pairs in subsets.items()}
    if not force:
        stale = {s: d for s in subsets if (d := header_differences(teacher_file_path(out_dir, s), headers[s]))}
        if stale:
            raise FileExistsError(
                f"{out_dir} holds teacher scores computed otherwise, which this command would replace:\n  "
                + "\n  ".join(f"{s}: {'; '.join(d)}" for s, d in stale.items())
                + "\nWrite these elsewhere (mining.out_dir=<new dir>), or replace them with mining.force=true")
    summary = []
    for s_index, (subset, pairs) in enumerate(subsets.items()):
        path = teacher_file_path(out_dir, subset)
        if not force and header_differences(path, headers[subset]) == []:
            log.info("teacher scores of %s in %s are up to date, reused", subset, path)
            summary.append({"subset": subset, "rows": len(pairs), "status": "skipped (up to date)"})
            continue
        start = time.perf_counter()
        rng = np.random.default_rng([seed, s_index])  # one stream per subset: adding a subset changes no other
        candidates = row_candidates(pairs, in_batch, rng)
        scores = teacher.score(pairs, candidates, image_loader)
        rows = [(p.row, [it.key for it in items], sc) for p, items, sc in zip(pairs, candidates, scores)]
        positive = np.array([sc[0] for sc in scores])
        others = np.array([v for sc in scores for v in sc[1:]])
        stats = {"candidates_per_row": float(np.mean([len(c) for c in candidates])),
                 "mean_positive_score": float(positive.mean()) if len(positive) else float("nan"),
                 "mean_other_score": float(others.mean()) if len(others) else float("nan"),
                 "positive_ranked_first": float(np.mean([sc[0] >= max(sc) for sc in scores])) if scores else float("nan")}
        write_teacher_file(path, headers[subset], rows, stats)
        summary.append({"subset": subset, "rows": len(pairs), "status": "scored", **stats,
                        "seconds": round(time.perf_counter() - start, 1)})
    return summary


def build_teacher(cfg_teacher: Mapping[str, Any], load_embedder: Callable[[], Any], embedder_description: Mapping,
                  device: str, batch_size: int, num_workers: int, progress: bool):
    """The teacher `mining.teacher` names: its cross-encoder, else the mining embedder (loaded only then)."""
    if cfg_teacher.get("cross_encoder"):
        return CrossEncoderTeacher(cfg_teacher["cross_encoder"], device=None if device == "auto" else device,
                                   batch_size=batch_size, max_length=cfg_teacher.get("max_length"), progress=progress)
    return EmbedderTeacher(load_embedder(), embedder_description, batch_size, num_workers, progress)
