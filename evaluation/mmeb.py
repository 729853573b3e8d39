"""The MMEB evaluation protocol (METHODS §1.2) for any list of eval datasets.

Every unique query and every unique candidate (text, image) is encoded once — per side, since
queries and candidates are formatted differently — and reused across rows and datasets. A row
scores a hit when its highest-cosine candidate is the ground truth, index 0 (ties resolved as in
the reference evaluators: the first maximum wins; `tie_rule="strict"` counts ties as misses).
Scores are percentages. Overall is the mean over datasets, not over meta-task means.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from datamodules.errors import DataError
from datamodules.images import ImageLoader
from datamodules.mmeb import META_TASKS, read_eval_rows
from datamodules.schema import EvalRow, Item

log = logging.getLogger(__name__)

META_ABBREV = {"Classification": "Cls", "VQA": "VQA", "Retrieval": "Ret", "Grounding": "Grd"}
SPLITS = ("IND", "OOD")


@dataclass
class EvalDataset:
    name: str
    meta_task: str
    split: str
    rows: list[EvalRow]
    image_root: str | None = None

    @property
    def needs_images(self) -> bool:
        return any(r.query.image or any(c.image for c in r.candidates) for r in self.rows)


def load_eval_suite(source: str, datasets: Mapping[str, Mapping] | Sequence[str], split: str = "test",
                    image_root: str | None = None, max_rows: int | None = None,
                    catalog: Mapping[str, tuple[str, str]] | None = None) -> list[EvalDataset]:
    """Read eval datasets. `datasets` maps names to {meta_task, split}, or lists names found in `catalog`."""
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
        rows = read_eval_rows(source, name, split, max_rows)
        suite.append(EvalDataset(name, meta, ind, rows, image_root))
    return suite


# ---------------------------------------------------------------------------------------- encoding
class _ItemDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[Item, str, int, str, ImageLoader]]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _ItemCollator:
    def __init__(self, input_builder, side: str):
        self.input_builder, self.side = input_builder, side

    def __call__(self, batch):
        texts = [it.text for it, *_ in batch]
        images = [loader.load(it.image, ds, row, field) if it.image else None for it, ds, row, field, loader in batch]
        return self.input_builder(texts, images, self.side)


def encode_unique(embedder, items: list[tuple[Item, str, int, str, ImageLoader]], side: str, batch_size: int,
                  num_workers: int = 0, progress: bool = False, distributed: bool = False) -> torch.Tensor:
    """Embed (item, dataset, row, field, loader) tuples in order → float32 [N, d] on CPU.

    `distributed=True` (every rank of an initialised process group calls it with the same `items`):
    rank r encodes items r, r + world, …, and every rank gets the whole matrix back (`gather_strided`)."""
    if not items:
        return torch.empty(0)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    shard = items[rank::world]
    out = []
    if shard:
        # Own generator: creating the iterator must not draw from the global RNG (see MMEBDataModule).
        loader = DataLoader(_ItemDataset(shard), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=_ItemCollator(embedder.input_builder, side), generator=torch.Generator())
        was_training = embedder.training
        embedder.eval()
        it = loader
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(loader, desc=f"encode {side}s", unit="batch", leave=False, disable=None if rank == 0 else True)
        try:
            with torch.no_grad():
                for inputs in it:
                    inputs = {k: v.to(embedder.device) if isinstance(v, torch.Tensor) else v
                              for k, v in inputs.items()}
                    out.append(embedder(inputs).float().cpu())
        finally:
            embedder.train(was_training)
    local = torch.cat(out) if out else torch.empty(0)
    return gather_strided(local, len(items), embedder.device) if world > 1 else local


def gather_strided(local: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """Undo `items[rank::world]`: every rank passes the [n_r, d] rows it encoded (an empty tensor when it
    held none) and gets all `total` rows back, on CPU, in the original order. Collective: every rank of
    the default process group must call it. Communication runs on `device` (the GPU under NCCL)."""
    world = dist.get_world_size()
    rank = dist.get_rank()
    expected = len(range(rank, total, world))
    if local.shape[0] != expected:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows, but rows {rank}::{world} of {total} are "
                         f"{expected}")
    # The width is unknown on ranks that encoded nothing: agree on it first.
    width = torch.tensor([local.shape[1] if local.ndim == 2 else 0], device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)
    d = int(width.item())
    per_rank = -(-total // world)
    buf = torch.zeros(per_rank, d, device=device)
    if expected:
        buf[:expected] = local.to(device=device, dtype=torch.float32)
    parts = [torch.empty_like(buf) for _ in range(world)]
    dist.all_gather(parts, buf)
    out = torch.empty(total, d)
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, total, world))].cpu()
    return out


def precision_at_1(scores: Sequence[torch.Tensor], tie_rule: str = "first") -> torch.Tensor:
    """Per-row hit (1.0/0.0): the ground truth (index 0) has the highest score."""
    hits = []
    for s in scores:
        if tie_rule == "first":
            hits.append(float(int(torch.argmax(s)) == 0))
        elif tie_rule == "strict":
            hits.append(float(s.numel() == 1 or bool(s[0] > s[1:].max())))
        else:
            raise ValueError(f"tie_rule must be 'first' or 'strict', got {tie_rule!r}")
    return torch.tensor(hits)


def evaluate_embedder(embedder, suite: Sequence[EvalDataset], batch_size: int = 32, num_workers: int = 0,
                      tie_rule: str = "first", progress: bool = True, distributed: bool = False) -> dict:
    """Run the protocol on every dataset of `suite`; returns the results dict (see `aggregate`).

    `distributed=True`: every rank of the initialised process group calls this with the same suite; the
    unique items are encoded in shards (one per rank) and every rank returns the same results."""
    loaders = {ds.name: ImageLoader(ds.image_root) for ds in suite}
    unique: dict[str, dict[tuple, int]] = {"query": {}, "target": {}}
    todo: dict[str, list] = {"query": [], "target": []}

    def index_of(side: str, item: Item, ds: EvalDataset, row: int, field: str) -> int:
        loader = loaders[ds.name]
        key = (item.text, str(loader.resolve(item.image)) if item.image else None)
        table = unique[side]
        if key not in table:
            table[key] = len(table)
            todo[side].append((item, ds.name, row, field, loader))
        return table[key]

    plan = []
    # datasets whose candidates are formatted as queries (the prompt's target_as_query: Gen2Embed's RefCOCO-Matching)
    as_query = set(getattr(getattr(embedder, "prompt", None), "target_as_query", ()))
    for ds in suite:
        c_side = "query" if ds.name in as_query else "target"
        q_idx = [index_of("query", r.query, ds, r.row, "qry_img_path") for r in ds.rows]
        c_idx = [[index_of(c_side, c, ds, r.row, "tgt_img_path") for c in r.candidates] for r in ds.rows]
        plan.append((ds, q_idx, c_idx, c_side))
    log.info("encoding %d unique queries and %d unique candidates for %d datasets",
             len(todo["query"]), len(todo["target"]), len(suite))
    q_emb = encode_unique(embedder, todo["query"], "query", batch_size, num_workers, progress, distributed)
    c_emb = encode_unique(embedder, todo["target"], "target", batch_size, num_workers, progress, distributed)
    per_dataset = {}
    for ds, q_idx, c_idx, c_side in plan:
        cands = q_emb if c_side == "query" else c_emb
        scores = [cands[c] @ q_emb[q] for q, c in zip(q_idx, c_idx)]
        hits = precision_at_1(scores, tie_rule)
        per_dataset[ds.name] = {"precision@1": float(hits.mean() * 100), "num_queries": len(ds.rows),
                                "meta_task": ds.meta_task, "split": ds.split}
    return aggregate(per_dataset)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(per_dataset: Mapping[str, Mapping]) -> dict:
    """{"overall", "IND", "OOD", "meta_tasks", "datasets"}: each a mean over datasets (percentages)."""
    if not per_dataset:
        raise ValueError("no dataset was evaluated")
    scores = {n: float(d["precision@1"]) for n, d in per_dataset.items()}
    meta = {m: _mean([scores[n] for n, d in per_dataset.items() if d["meta_task"] == m]) for m in META_TASKS}
    return {
        "overall": _mean(list(scores.values())),
        "IND": _mean([scores[n] for n, d in per_dataset.items() if d["split"] == "IND"]),
        "OOD": _mean([scores[n] for n, d in per_dataset.items() if d["split"] == "OOD"]),
        "meta_tasks": {m: v for m, v in meta.items() if v is not None},
        "datasets": {n: {"precision@1": scores[n], "num_queries": int(d["num_queries"]),
                         "meta_task": d["meta_task"], "split": d["split"]} for n, d in per_dataset.items()},
    }


def chance_level(suite: Sequence[EvalDataset]) -> float:
    """Expected Overall of a random ranker: mean over datasets of mean(1/#candidates), in percent."""
    per = [sum(1.0 / len(r.candidates) for r in ds.rows) / len(ds.rows) for ds in suite]
    return 100.0 * sum(per) / len(per)


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.1f}"


def render_table(results: Mapping, label: str = "model") -> str:
    """Markdown: the papers' summary columns, then one row per dataset."""
    mt = results["meta_tasks"]
    head = "| Model | Cls | VQA | Ret | Grd | IND | OOD | Overall |\n|---|---|---|---|---|---|---|---|\n"
    row = (f"| {label} | " + " | ".join(_fmt(mt.get(m)) for m in META_TASKS)
           + f" | {_fmt(results['IND'])} | {_fmt(results['OOD'])} | {_fmt(results['overall'])} |\n")
    lines = ["\n| Dataset | Meta-task | Split | Queries | Precision@1 |", "|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(META_TASKS)}
    for name, d in sorted(results["datasets"].items(), key=lambda kv: (order[kv[1]["meta_task"]], kv[1]["split"], kv[0])):
        lines.append(f"| {name} | {d['meta_task']} | {d['split']} | {d['num_queries']} | {d['precision@1']:.1f} |")
    return head + row + "\n".join(lines) + "\n"


def write_results(results: Mapping, directory: str | Path, label: str = "model", extra_md: str = "") -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (directory / "results.md").write_text(render_table(results, label) + (("\n" + extra_md) if extra_md else ""))
    return directory
