"""The evaluation engine: the MMEB protocol (METHODS §1.2) for any list of eval datasets, v1 and V2 alike (the
reports are `mmeb` and `mmeb_v2`).

Datasets are evaluated one after another. Every unique query and candidate (text, image) is encoded once
per side — queries and candidates are formatted differently; a dataset may have its candidates formatted
as queries (`candidate_side="query"`) — and reused by every row and every later dataset that holds it
(kept only while a later dataset still needs it). A row scores a hit when its highest-cosine candidate
is the ground truth, index 0 (or any of the row's `relevant` candidates, MMEB-V2's MomentSeeker) (ties as in the reference evaluators: the first maximum wins;
`tie_rule="strict"` counts ties as misses). Scores are percentages; Overall is the mean over datasets,
not over meta-task means.

Guarantees: non-finite embeddings are refused (the dataset fails, naming the item); every dataset records
its rows with a tie at the top, the rows whose tie the tie rule decides, and the rows whose ground truth
is duplicated among the candidates; a dataset whose query or candidate embeddings have collapsed is
marked and scored with ties as misses, never 100 by the first-maximum rule. A dataset that fails to load
or score is recorded in `failed` with its error while the others are still scored.

Scores come from the scorer the model and settings choose (`evaluation/scorers.py`): the dot product, or MaxSim for
multi-vector models ([N, L, d] token vectors, padded with zero rows), optionally over token-pooled or quantised
documents; every entry records the documents' storage (vectors and bytes per document) beside its score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from datamodules.errors import DataError
from datamodules.media import MediaLoader
from datamodules.mmeb import META_TASKS, read_eval_dataset
from datamodules.schema import CorpusTask, EvalRow, Item
from embedders.diagnostics import embedding_spread, is_collapsed
from embedders.multi_vector import cat_padded

from .encoding import encode_unique
from .retrieval import evaluate_corpus_retrieval
from .scorers import EmbeddingScorer
from .scoring import pad_candidates, precision_at_1, row_outcomes, score_rows  # noqa: F401
from .store import EvalSettings

log = logging.getLogger(__name__)

META_ABBREV = {"Classification": "Cls", "VQA": "VQA", "Retrieval": "Ret", "Grounding": "Grd"}
SPLITS = ("IND", "OOD")
SIDES = ("query", "target")


@dataclass
class EvalDataset:
    name: str
    meta_task: str
    split: str
    rows: list[EvalRow]
    image_root: str | None = None
    #: Rows the reader skipped, by reason (e.g. {"empty item": 3}); reported in every output.
    skipped: dict[str, int] = field(default_factory=dict)
    #: Which side's formatting the candidates get: "target" (MMEB), or "query" (Gen2Embed's RefCOCO-Matching).
    candidate_side: str = "target"
    #: Why the dataset could not be read (then `rows` is empty and the dataset is reported as failed).
    error: str | None = None
    #: MMEB-V2 (`evaluation/mmeb_v2.py`): image | video | visdoc; None for an MMEB (v1) dataset.
    modality: str | None = None
    #: The headline metric of the dataset (a key of the score dict, a fraction; tables show it x 100).
    metric: str = "hit@1"
    #: A corpus-level task (`ranking: corpus`): every query ranked against the whole corpus; `rows` stays empty.
    task: CorpusTask | None = None
    #: Frames fed per video, and frames first kept per video file (the reference's two sampling steps).
    num_frames: int = 8
    max_frames_saved: int | None = 64
    #: How a video file is reduced to `max_frames_saved` frames (`datamodules.video.FRAME_SAVING`).
    frame_saving: str = "spread"
    #: MMEB-V2: whose evaluator the items are composed as (`datamodules.mmeb_v2_qwen3.COMPOSITIONS`); it must be the
    #: scoring prompt's `mmeb_v2_composition` (`runner.score` checks).
    composition: str | None = None
    #: Frames fed per candidate video when they differ from the queries' (Qwen3-VL-Embedding's moment-retrieval
    #: clips: 8 against the query video's 64); None = `num_frames`.
    candidate_num_frames: int | None = None

    def __post_init__(self):
        if self.candidate_side not in SIDES:
            raise ValueError(f"eval dataset {self.name!r}: candidate_side must be 'query' or 'target', "
                             f"got {self.candidate_side!r}")

    def items(self):
        """Every item the dataset encodes (queries and candidates, or queries and corpus)."""
        if self.task is not None:
            yield from self.task.queries
            yield from self.task.corpus
        for r in self.rows:
            yield r.query
            yield from r.candidates

    @property
    def needs_images(self) -> bool:
        """Any visual input (image, pages or video): what a text-only model cannot score."""
        return any(it.has_visual for it in self.items())

    @property
    def needs_videos(self) -> bool:
        return any(it.video for it in self.items())

    @property
    def num_queries(self) -> int:
        return len(self.task.queries) if self.task is not None else len(self.rows)


def load_eval_suite(source: str, datasets: Mapping[str, Mapping] | Sequence[str], split: str = "test",
                    image_root: str | None = None, max_rows: int | None = None,
                    catalog: Mapping[str, tuple[str, str]] | None = None,
                    isolate_errors: bool = False) -> list[EvalDataset]:
    """Read eval datasets. `datasets` maps names to {meta_task, split[, candidate_side]}, or lists names found
    in `catalog`. `isolate_errors=True`: a dataset that cannot be read is returned with its `error` set (and
    no rows) instead of stopping the others; configuration errors (meta-task, split) still raise."""
    suite = []
    if not isinstance(datasets, Mapping):
        catalog = catalog or {}
        unknown = [d for d in datasets if d not in catalog]
        if unknown:
            raise DataError(f"eval dataset(s) {unknown} have no meta-task/split; known: {sorted(catalog)}")
        datasets = {d: {"meta_task": catalog[d][0], "split": catalog[d][1]} for d in datasets}
    for name, info in datasets.items():
        meta, ind = info["meta_task"], info["split"]
        if meta not in META_TASKS:
            raise DataError(f"meta_task {meta!r} is not one of {META_TASKS}", dataset=name, field="meta_task")
        if ind not in SPLITS:
            raise DataError(f"split {ind!r} is not IND or OOD", dataset=name, field="split")
        side = info.get("candidate_side", "target")
        try:
            read = read_eval_dataset(source, name, split, max_rows)
        except Exception as err:
            if not isolate_errors:
                raise
            log.error("eval dataset %s cannot be read: %s", name, err)
            suite.append(EvalDataset(name, meta, ind, [], image_root, candidate_side=side,
                                     error=f"{type(err).__name__}: {err}"))
            continue
        suite.append(EvalDataset(name, meta, ind, read.rows, image_root, candidate_side=side,
                                 skipped=dict(read.skipped)))
    return suite


# -------------------------------------------------------------------------------------- evaluation
class _Plan:
    """Global ids of the unique items of every dataset, per side, and the last dataset that uses each.
    Per dataset: query ids [N] and padded candidate ids [N, K_max] (-1 = none) in their side's id space."""

    def __init__(self, suite: Sequence[EvalDataset]):
        self.ids: dict[str, dict[tuple, int]] = {s: {} for s in SIDES}
        self.items: dict[str, list] = {s: [] for s in SIDES}
        self.last_use: dict[str, list[int]] = {s: [] for s in SIDES}
        self.rows: list[tuple[torch.Tensor, torch.Tensor]] = []
        for i, ds in enumerate(suite):
            loader = MediaLoader(ds.image_root, ds.num_frames, ds.max_frames_saved, ds.frame_saving)
            cands = loader if ds.candidate_num_frames is None else \
                MediaLoader(ds.image_root, ds.candidate_num_frames, ds.max_frames_saved, ds.frame_saving)
            root = str(ds.image_root) if ds.image_root is not None else None
            if ds.task is not None:  # corpus ranking: the corpus is one shared "candidate row"
                q = [self._id("query", it, ds, j, "query", loader, root, i) for j, it in enumerate(ds.task.queries)]
                c = [[self._id(ds.candidate_side, it, ds, j, "corpus", cands, root, i)
                      for j, it in enumerate(ds.task.corpus)]]
            else:
                q = [self._id("query", r.query, ds, r.row, "qry_img_path", loader, root, i) for r in ds.rows]
                c = [[self._id(ds.candidate_side, it, ds, r.row, "tgt_img_path", cands, root, i)
                      for it in r.candidates] for r in ds.rows]
            self.rows.append((torch.tensor(q, dtype=torch.long), pad_candidates(c)))

    def _id(self, side: str, item: Item, ds: EvalDataset, row: int, fld: str, loader: MediaLoader, root: str | None,
            i: int) -> int:
        # Identity = text + visual path(s) under the dataset's root (no filesystem call per occurrence); a video's
        # frame sampling is part of it (another num_frames is another input).
        if item.video:
            visual = (root, "video", item.video, loader.num_frames, ds.max_frames_saved, ds.frame_saving)
        elif item.pages:
            visual = (root, "pages", item.pages)
        else:
            visual = (root, item.image) if item.image else None
        key = (item.text, visual) if item.instruction is None else (item.text, visual, item.instruction)
        table = self.ids[side]
        index = table.get(key)
        if index is None:
            index = table[key] = len(table)
            self.items[side].append((item, ds.name, row, fld, loader))
            self.last_use[side].append(i)
        else:
            self.last_use[side][index] = i
        return index


class _Cache:
    """Embeddings of one side kept across datasets while a later dataset still needs them."""

    def __init__(self):
        self.pos: dict[int, int] = {}
        self.mat = torch.empty(0)

    def lookup(self, ids: list[int], encode: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """[len(ids), d] for `ids` (sorted unique global ids), encoding the ones not cached."""
        missing = [x for x in ids if x not in self.pos]
        new = encode(missing) if missing else torch.empty(0)
        if len(missing) == len(ids):
            return new  # nothing cached: no second copy of a possibly large matrix
        ref = new if new.numel() else self.mat
        if ref.ndim == 3:  # multi-vector: both parts padded to the wider token count
            width = max(new.shape[1] if new.numel() else 0, self.mat.shape[1])
            out = torch.zeros(len(ids), width, ref.shape[2])
        else:
            out = torch.empty(len(ids), ref.shape[1])
        have = [j for j, x in enumerate(ids) if x in self.pos]
        parts = [(have, self.mat[[self.pos[ids[j]] for j in have]])]
        if missing:
            parts.append(([j for j, x in enumerate(ids) if x not in self.pos], new))
        for rows, part in parts:
            if part.ndim == 3:
                out[rows, : part.shape[1]] = part
            else:
                out[rows] = part
        return out

    def keep(self, ids: list[int], local: torch.Tensor, alive: Callable[[int], bool]) -> None:
        """Keep the cached and the dataset's (`ids` → rows of `local`) embeddings a later dataset needs."""
        local_pos = {x: j for j, x in enumerate(ids)}
        old = [x for x in self.pos if x not in local_pos and alive(x)]
        new = [x for x in ids if alive(x)]
        parts = ([self.mat[[self.pos[x] for x in old]]] if old else []) + \
                ([local[[local_pos[x] for x in new]]] if new else [])
        self.mat = cat_padded(parts) if parts else torch.empty(0)
        self.pos = {x: j for j, x in enumerate(old + new)}


def run_protocol(embedder, suite: Sequence[EvalDataset], batch_size: int = 32, num_workers: int = 0,
                      tie_rule: str = "first", progress: bool = True, distributed: bool = False, *,
                      settings: EvalSettings | None = None, sort: bool = True,
                      on_result: Callable[[EvalDataset, dict, list[dict]], None] | None = None,
                      stats: dict | None = None, max_tokens: int | None = None) -> dict:
    """Run the protocol on every dataset of `suite`; returns {"datasets": {name: entry}, "failed": {name: error}}
    (the reports aggregate the entries: `mmeb.aggregate`, `mmeb_v2.aggregate_v2`). `on_result(dataset, entry, predictions)` is called after each dataset.

    `distributed=True`: every rank of the initialised process group calls this with the same suite; the
    unique items are encoded in shards (one per rank) and every rank returns the same results. `max_tokens`:
    token-budget batches (`encoding.encode_unique`)."""
    settings = settings or EvalSettings(tie_rule=tie_rule)
    failed = {ds.name: ds.error for ds in suite if ds.error}
    if distributed and dist.get_world_size() > 1:
        # Every rank read the data itself: a dataset unreadable on any rank is skipped on all of them, so the
        # ranks run the same collectives.
        per_rank: list = [None] * dist.get_world_size()
        dist.all_gather_object(per_rank, failed)
        for r, errors in enumerate(per_rank):
            for name, err in errors.items():
                failed.setdefault(name, err if r == 0 else f"(on rank {r}) {err}")
    runnable = [ds for ds in suite if ds.name not in failed]
    scorer = EmbeddingScorer.for_model(embedder, settings)
    plan = _Plan(runnable)
    log.info("%d unique query-side and %d unique target-side items in %d datasets",
             len(plan.items["query"]), len(plan.items["target"]), len(runnable))
    caches = {s: _Cache() for s in SIDES}
    per_dataset: dict[str, dict] = {}
    for i, ds in enumerate(runnable):
        q_ids, c_ids = plan.rows[i]
        needed = {"query": torch.unique(q_ids), "target": torch.empty(0, dtype=torch.long)}
        needed[ds.candidate_side] = torch.unique(torch.cat([needed[ds.candidate_side], c_ids[c_ids >= 0]]))
        local: dict[str, tuple[list[int], torch.Tensor]] = {}
        try:
            for side in SIDES:
                ids = needed[side].tolist()  # sorted, unique
                if not ids:
                    continue

                what = "queries" if side == "query" else "candidates"
                if side == "query" and ds.candidate_side == "query":
                    what = "queries and candidates"

                def encode(missing, side=side, what=what, ds=ds):
                    return encode_unique(embedder, [plan.items[side][x] for x in missing], side, batch_size,
                                         num_workers, progress, distributed, sort=sort,
                                         desc=f"{ds.name} {what}", stats=stats, max_tokens=max_tokens)

                local[side] = (ids, caches[side].lookup(ids, encode))
            entry, predictions = _score_dataset(ds, q_ids, c_ids, local, settings, scorer)
            per_dataset[ds.name] = entry
            log.info("[%d/%d] %s: %s %.2f over %d queries", i + 1, len(runnable), ds.name, ds.metric,
                     entry.get("score", entry["precision@1"]), entry["num_queries"])
            if on_result is not None:
                on_result(ds, entry, predictions)
        except Exception as err:  # one dataset's failure must not cost the others their scores
            log.error("[%d/%d] %s failed: %s", i + 1, len(runnable), ds.name, err, exc_info=True)
            per_dataset.pop(ds.name, None)
            failed[ds.name] = f"{type(err).__name__}: {err}"
        finally:
            for side in SIDES:
                ids, mat = local.get(side, ([], torch.empty(0)))
                caches[side].keep(ids, mat, lambda x, side=side, i=i: plan.last_use[side][x] > i)
    return {"datasets": per_dataset, "failed": failed}


def _flat(mat: torch.Tensor) -> torch.Tensor:
    """Rows as single vectors for the collapse check (a multi-vector row: all its token vectors, flattened)."""
    return mat.flatten(1) if mat.ndim == 3 else mat


def _score_dataset(ds: EvalDataset, q_ids: torch.Tensor, c_ids: torch.Tensor,
                   local: Mapping[str, tuple[list[int], torch.Tensor]], settings: EvalSettings,
                   scorer: EmbeddingScorer | None = None) -> tuple[dict, list]:
    """Score one dataset from its rows' global ids and the embeddings of its unique items (`local`: per side,
    the sorted unique ids and their [len, d] (multi-vector: [len, L, d]) embeddings)."""
    scorer = scorer or EmbeddingScorer()
    if ds.task is not None:
        return _score_corpus(ds, q_ids, c_ids, local, settings, scorer)
    q_order, q_mat = local["query"]
    c_order, c_mat = local[ds.candidate_side]
    q_idx = torch.searchsorted(torch.tensor(q_order, dtype=torch.long), q_ids)
    valid = c_ids >= 0
    c_idx = torch.searchsorted(torch.tensor(c_order, dtype=torch.long), c_ids.clamp(min=0)).masked_fill(~valid, -1)
    q_rows = torch.unique(q_idx)
    c_rows = torch.unique(c_idx[valid])
    collapsed = [side for side, mat, rows in (("queries", q_mat, q_rows), ("candidates", c_mat, c_rows))
                 if is_collapsed(_flat(mat[rows]), settings.collapse_tolerance)]
    if collapsed:
        log.warning("%s: the model's %s embeddings have collapsed (spread %s ≤ %.4g): ties are scored as misses",
                    ds.name, " and ".join(collapsed),
                    "/".join(f"{embedding_spread(_flat(m[r])):.2g}" for m, r in ((q_mat, q_rows), (c_mat, c_rows))),
                    settings.collapse_tolerance)
    docs = scorer.documents(c_mat) if c_mat.ndim == 3 else c_mat
    scores = scorer.score_rows(q_mat, docs, q_idx, c_idx)
    relevant = None
    if any(r.relevant != (0,) for r in ds.rows):  # several correct candidates (MomentSeeker, SSv2's repeats)
        relevant = torch.zeros(scores.shape, dtype=torch.bool)
        for k, r in enumerate(ds.rows):
            relevant[k, list(r.relevant)] = True
    out = row_outcomes(scores, c_idx, settings.tie_rule, settings.tie_tolerance, ties_are_misses=bool(collapsed),
                       relevant=relevant)
    n = len(ds.rows)
    entry = {
        "precision@1": float(out.hit.float().mean() * 100) if n else 0.0,
        "num_queries": n, "meta_task": ds.meta_task, "split": ds.split,
        "tied_rows": int(out.tied.sum()), "tie_decided": int(out.tie_decided.sum()),
        "duplicate_gt": int(out.duplicate_gt.sum()), "collapsed": collapsed, "skipped": dict(ds.skipped),
        "storage": scorer.storage(docs[c_rows]),
    }
    predictions = [{"row": r, "pred": p, "score_gt": g, "score_pred": s, "hit": h}
                   for r, p, g, s, h in zip([r.row for r in ds.rows], out.pred.tolist(), out.score_gt.tolist(),
                                            out.score_pred.tolist(), out.hit.tolist())]
    if relevant is not None:
        for p, r in zip(predictions, ds.rows):
            p["relevant"] = list(r.relevant)
    if ds.modality is not None:  # MMEB-V2: the reference's score keys (fractions) and the headline score
        entry.update(modality=ds.modality, metric=ds.metric, metrics={"hit@1": entry["precision@1"] / 100},
                     score=entry["precision@1"])
    return entry, predictions


def _score_corpus(ds: EvalDataset, q_ids: torch.Tensor, c_ids: torch.Tensor,
                  local: Mapping[str, tuple[list[int], torch.Tensor]], settings: EvalSettings,
                  scorer: EmbeddingScorer) -> tuple[dict, list]:
    """A corpus-level dataset: every query ranked against the whole corpus (`evaluation/retrieval.py`), scored
    against the graded qrels. The entry holds the reference's metric keys as fractions under `metrics`, the
    headline metric x 100 as `score`, and hit@1 x 100 as `precision@1` (so V1 tools read it too)."""
    task = ds.task
    q_order, q_mat = local["query"]
    c_order, c_mat = local[ds.candidate_side]
    q_idx = torch.searchsorted(torch.tensor(q_order, dtype=torch.long), q_ids)
    c_idx = torch.searchsorted(torch.tensor(c_order, dtype=torch.long), c_ids[0])
    queries, corpus = q_mat[q_idx], c_mat[c_idx]
    collapsed = [side for side, mat in (("queries", queries), ("candidates", corpus))
                 if is_collapsed(_flat(mat), settings.collapse_tolerance)]
    if collapsed:
        log.warning("%s: the model's %s embeddings have collapsed: the corpus order among ties decides the ranking "
                    "(ascending corpus index), so its metrics do not measure the model", ds.name, " and ".join(collapsed))
    corpus = scorer.documents(corpus)
    result = evaluate_corpus_retrieval(queries, corpus, list(task.query_ids), list(task.corpus_ids), task.qrels,
                                       search_fn=scorer.search)
    metrics = result.metrics
    entry = {
        "precision@1": metrics["hit@1"] * 100, "num_queries": len(task.queries), "meta_task": ds.meta_task,
        "split": ds.split, "corpus_size": len(task.corpus), "collapsed": collapsed, "skipped": dict(ds.skipped),
        "modality": ds.modality, "metric": ds.metric, "metrics": metrics, "score": metrics[ds.metric] * 100,
        "storage": scorer.storage(corpus),
    }
    # The reference's <dataset>_pred.jsonl keys: prediction (ranked ids), label (relevant ids), rel_scores; and
    # `metrics`, the query's own value of every metric (what a paired comparison resamples: compare.py).
    predictions = []
    for i, (qid, ranked, scores) in enumerate(zip(task.query_ids, result.ranked_ids, result.ranked_scores)):
        relevant = {d: g for d, g in task.qrels[qid].items() if g > 0}
        predictions.append({"query_id": qid, "prediction": ranked, "scores": scores, "label": list(relevant),
                            "rel_scores": list(relevant.values()),
                            "metrics": {k: float(v[i]) for k, v in result.per_query.items()}})
    return entry, predictions


def dataset_notes(d: Mapping, tie_flag_share: float = 0.01) -> list[str]:
    """What a reader of the table must know about a dataset's number (empty for a clean result)."""
    notes = []
    n = max(int(d.get("num_queries", 0)), 1)
    if d.get("collapsed"):
        notes.append(f"COLLAPSED ({' and '.join(d['collapsed'])} embeddings identical): ties scored as misses")
    decided = int(d.get("tie_decided", 0))
    if decided and decided / n >= tie_flag_share:
        notes.append(f"ties decide {decided} rows ({100 * decided / n:.1f} %)")
    if d.get("duplicate_gt"):
        notes.append(f"ground truth duplicated among the candidates in {d['duplicate_gt']} rows")
    if d.get("skipped"):
        notes.append("reader skipped " + ", ".join(f"{k}: {v}" for k, v in sorted(d["skipped"].items())))
    return notes
