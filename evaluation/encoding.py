"""Inference over many items: encode a list of unique (text, visual) items into one embedding matrix, in
length-sorted batches (least padding), with image/video decoding in DataLoader workers, sharded over the ranks
of a process group, and returned in the caller's order. Shared by MMEB evaluation and hard-negative mining.

Items are `(Item, dataset, row, field, loader)` tuples, the loader an `ImageLoader` or a `MediaLoader` (videos,
document pages; `datamodules/media.py`): the dataset/row/field name the item in every error (a missing image
or video, a batch the processor refuses, a non-finite embedding).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.errors import DataError
from datamodules.images import ImageLoader
from datamodules.media import MediaLoader, load_visual
from datamodules.schema import Item

log = logging.getLogger(__name__)

EncodeItem = tuple[Item, str, int, str, ImageLoader]


class NonFiniteEmbeddingError(ValueError):
    """The model returned NaN or ±Inf for an item: the weights (or the inference dtype) are broken."""


def describe_item(entry: EncodeItem, side: str) -> str:
    item, dataset, row, field, _ = entry
    image = f", image {item.image!r}" if item.image else f", video {item.video!r}" if item.video else \
        f", {len(item.pages)} pages" if item.pages else ""
    return f"dataset {dataset!r}, row {row} ({side} side, field {field!r}{image}, text {item.text[:60]!r})"


# ------------------------------------------------------------------------------------------- lengths
def _header_size(loader: ImageLoader, path: str, dataset: str, row: int, field: str) -> tuple[int, int]:
    try:
        with Image.open(loader.resolve(path)) as im:
            return im.size
    except Exception:
        loader.load(path, dataset, row, field)  # raises the named error
        raise


def _image_size(entry: EncodeItem) -> tuple[int, int] | None:
    """(width, height) from the image header (no decoding); a missing/unreadable file raises the loader's
    DataError, which names the dataset, row, field and resolved path."""
    item, dataset, row, field, loader = entry
    if not item.image:
        return None
    return _header_size(loader, item.image, dataset, row, field)


def _visual_sizes(entry: EncodeItem) -> list[tuple[int, int]] | None:
    """One (width, height) per image the item feeds the model: its image, each page, or each sampled video frame
    (a video is probed — frame count and the first frame's size — not decoded whole)."""
    item, dataset, row, field, loader = entry
    if item.image:
        return [_image_size(entry)]
    if item.pages:
        return [_header_size(loader, p, dataset, row, field) for p in item.pages]
    if item.video:
        if not isinstance(loader, MediaLoader):
            load_visual(loader, item, dataset, row, field)  # raises the named error
        frames, size = loader.videos.probe(item.video, dataset, row, field)
        return [size] * frames
    return None


def _tokenizer_of(processor):
    tok = getattr(processor, "tokenizer", None) or processor
    return tok if callable(tok) and hasattr(tok, "convert_tokens_to_ids") else None


def instruction_kwargs(items: Sequence[Item]) -> dict:
    """`instructions=` for the input builder when any item carries its instruction apart (MMEB-V2 readers);
    nothing otherwise, so builders of MMEB (v1) items are called exactly as before."""
    if any(it.instruction is not None for it in items):
        return {"instructions": [it.instruction for it in items]}
    return {}


def visual_descriptor(item: Item):
    """What formatting needs to know of an item's visual input without loading it (`embedders.prompts.Visual`)."""
    from embedders.prompts import Visual

    return Visual(images=len(item.pages) or int(bool(item.image)), videos=int(bool(item.video)))


def length_keys(entries: Sequence[EncodeItem], input_builder, side: str) -> list[tuple[int, int]]:
    """A sort key per item that orders items by how many tokens the processor will give them.

    Text: tokens of the formatted text (characters when the processor has no tokenizer). Images: with a
    Qwen-style image processor (`get_number_of_image_patches`, `merge_size`) the exact image-token count,
    added to the text tokens; otherwise the image area as the primary key and text length second."""
    if not entries:
        return []
    with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
        all_sizes = list(pool.map(_visual_sizes, entries))
    processor = getattr(input_builder, "processor", None)
    texts = [e[0].text for e in entries]
    if hasattr(input_builder, "format"):
        texts = input_builder.format(texts, [visual_descriptor(e[0]) for e in entries], side,
                                     **instruction_kwargs([e[0] for e in entries]))
    tok = _tokenizer_of(processor)
    if tok is not None:
        text_len = []
        for s in range(0, len(texts), 4096):
            text_len += [len(ids) for ids in tok(list(texts[s:s + 4096]), add_special_tokens=False)["input_ids"]]
    else:
        text_len = [len(t) for t in texts]
    image_processor = getattr(processor, "image_processor", None)
    count = getattr(image_processor, "get_number_of_image_patches", None)
    if count is not None and hasattr(image_processor, "merge_size"):  # Qwen-VL processors
        # The formatted text holds one token per image, which the processor expands to the image's tokens; a
        # video's frames are counted as images (an upper bound: frame pairs share a temporal patch).
        merge = int(getattr(image_processor, "merge_size", 1) or 1) ** 2
        return [(n + sum(count(h, w) // merge - 1 for w, h in (sizes or ())), 0)
                for n, sizes in zip(text_len, all_sizes)]
    return [(sum(w * h for w, h in (sizes or ())), n) for n, sizes in zip(text_len, all_sizes)]


# ------------------------------------------------------------------------------------------ batching
class _ItemDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[EncodeItem]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _ItemCollator:
    """Decodes the images (in the DataLoader worker) and runs the processor. A batch the processor
    refuses is retried item by item so that the error names the item that caused it."""

    def __init__(self, input_builder, side: str):
        self.input_builder, self.side = input_builder, side

    def __call__(self, batch: list[EncodeItem]):
        images = [load_visual(loader, it, ds, row, field) for it, ds, row, field, loader in batch]
        texts = [it.text for it, *_ in batch]
        try:
            return self.input_builder(texts, images, self.side, **instruction_kwargs([it for it, *_ in batch]))
        except DataError:
            raise
        except Exception as err:
            for entry, text, image in zip(batch, texts, images):
                try:
                    self.input_builder([text], [image], self.side, **instruction_kwargs([entry[0]]))
                except Exception as one:
                    _, ds, row, field, _ = entry
                    raise DataError(f"the processor refused this item ({type(one).__name__}: {one})", ds, row,
                                    field) from one
            raise DataError(f"the processor refused a batch of {len(batch)} {self.side}s "
                            f"({type(err).__name__}: {err}); first item: {describe_item(batch[0], self.side)}") from err


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def effective_workers(num_workers: int, shard: Sequence[EncodeItem], batches: int, cpus: int | None = None) -> int:
    """Workers decode images while the model runs; starting them costs a process each. At most one fewer than
    the CPUs this process may use (one runs the model), and none below two batches per worker or without
    any image to decode: there they cannot pay for themselves, so encoding stays in-process."""
    workers = min(num_workers, (available_cpus() if cpus is None else cpus) - 1)
    if workers <= 0 or batches < 2 * workers or not any(it.has_visual for it, *_ in shard):
        return 0
    return workers


def _progress_bar(total: int, desc: str, enabled: bool):
    if not enabled or total == 0:
        return None
    import sys

    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    # Under SLURM (no terminal) a line every 30 s, not a carriage return per batch in the log file.
    return tqdm(total=total, desc=desc, unit="item", dynamic_ncols=True, leave=True, disable=False,
                mininterval=0.5 if tty else 30.0)


def encode_unique(embedder, items: list[EncodeItem], side: str, batch_size: int, num_workers: int = 0,
                  progress: bool = False, distributed: bool = False, *, sort: bool = True,
                  desc: str | None = None, stats: dict | None = None) -> torch.Tensor:
    """Embed items → float32 [N, d] on CPU, row i = items[i] (whatever order they were encoded in).

    `sort=True`: items are encoded longest first in batches of similar length (least padding; the longest
    batch comes first, so an out-of-memory batch size shows at once). `distributed=True` (every rank of an
    initialised process group calls this with the same `items`): rank r encodes sorted items r, r + world, …
    and every rank gets the whole matrix back; a failure on any rank is raised on every rank (no rank is left
    waiting in a collective). Non-finite embeddings raise `NonFiniteEmbeddingError` naming the item.
    `stats` (a dict) accumulates items, tokens, padded positions, batches and seconds."""
    if not items:
        return torch.empty(0)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    builder = embedder.input_builder
    start = time.perf_counter()

    def sharded(fn):
        """Run fn on every rank; on failure anywhere, raise the first rank's error on every rank."""
        error, value = None, None
        try:
            value = fn()
        except Exception as err:  # re-raised below, on every rank
            error = err
        if world > 1:
            messages = [None] * world
            dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}")
            failed = [(r, m) for r, m in enumerate(messages) if m is not None]
            if failed and error is None:
                r, m = failed[0]
                raise RuntimeError(f"rank {r} failed: {m}")
        if error is not None:
            raise error
        return value

    if sort:
        # Each rank measures a strided slice (image headers can sit on a network file system); all keys are
        # then shared so every rank derives the same global order.
        keys = sharded(lambda: length_keys(items[rank::world], builder, side))
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, keys)
            keys = [None] * len(items)
            for r, part in enumerate(parts):
                keys[r::world] = part
        order = sorted(range(len(items)), key=lambda i: keys[i], reverse=True)
    else:
        order = list(range(len(items)))
    shard = [items[i] for i in order[rank::world]]
    # One process writes each embedding straight to its caller position; a rank fills its shard in order.
    destination = order if world == 1 else list(range(len(shard)))

    # Under FSDP (`embedder.uniform_trace`) every forward all-gathers every unit: each rank runs as many batches
    # as the rank with the most (the counts follow from the sizes every rank knows: no exchange), repeating a
    # batch of its own (or, with an empty shard, of the first item) whose output is dropped.
    lockstep = getattr(embedder, "uniform_trace", False) and world > 1
    most = -(-len(items[0::world]) // batch_size) if lockstep else 0

    def pad_forwards(done: int) -> None:
        if done >= most:
            return
        filler = _ItemCollator(builder, side)(shard[-batch_size:] if shard else items[:1])
        filler = {k: v.to(embedder.device) if isinstance(v, torch.Tensor) else v for k, v in filler.items()}
        was_training = embedder.training
        embedder.eval()
        try:
            with torch.no_grad():
                for _ in range(most - done):
                    embedder(filler)
        finally:
            embedder.train(was_training)

    def encode_shard() -> torch.Tensor:
        if not shard:
            pad_forwards(0)
            return torch.empty(0)
        batches = [list(range(s, min(s + batch_size, len(shard)))) for s in range(0, len(shard), batch_size)]
        device = embedder.device
        # Own generator: creating the iterator (and seeding workers) must not draw from the global RNG.
        loader = DataLoader(_ItemDataset(shard), batch_sampler=batches,
                            num_workers=effective_workers(num_workers, shard, len(batches)),
                            collate_fn=_ItemCollator(builder, side), generator=torch.Generator(),
                            pin_memory=device.type == "cuda")
        label = (desc or f"encode {side}s") + (f" (rank 0 of {world})" if world > 1 else "")
        bar = _progress_bar(len(shard), label, progress and rank == 0)
        out = None
        was_training = embedder.training
        embedder.eval()
        try:
            with torch.no_grad():
                for batch_rows, inputs in zip(batches, loader):
                    mask = inputs.get("attention_mask") if isinstance(inputs, dict) else None
                    inputs = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                              for k, v in inputs.items()}
                    emb = embedder(inputs).float().cpu()
                    bad = ~torch.isfinite(emb).all(dim=-1)
                    if bad.any():
                        entry = shard[batch_rows[int(bad.nonzero()[0])]]
                        raise NonFiniteEmbeddingError(
                            f"non-finite embedding (NaN/Inf) for {describe_item(entry, side)}; {int(bad.sum())} of "
                            f"{len(batch_rows)} items in its batch are non-finite. The model's weights or its "
                            "inference dtype are broken (fp16 overflow: use bfloat16 or float32); no score is "
                            "computed from non-finite embeddings")
                    if out is None:
                        out = torch.empty(len(shard), emb.shape[1])
                    out[[destination[j] for j in batch_rows]] = emb
                    if stats is not None:
                        stats["items"] = stats.get("items", 0) + len(batch_rows)
                        stats["batches"] = stats.get("batches", 0) + 1
                        if mask is not None:
                            stats["tokens"] = stats.get("tokens", 0) + int(mask.sum())
                            stats["positions"] = stats.get("positions", 0) + mask.numel()
                    if bar is not None:
                        bar.update(len(batch_rows))
        finally:
            embedder.train(was_training)
            if bar is not None:
                bar.close()
        pad_forwards(len(batches))
        return out

    result = sharded(encode_shard)
    if world > 1:
        gathered = gather_strided(result, len(items), embedder.device)  # in sorted order
        result = torch.empty_like(gathered)
        result[torch.tensor(order)] = gathered
    if stats is not None:
        stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - start
    return result


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


def padding_share(stats: dict[str, Any]) -> float | None:
    """Share of padded positions among all positions the model processed (None without attention masks)."""
    positions = stats.get("positions", 0)
    return 1.0 - stats.get("tokens", 0) / positions if positions else None
