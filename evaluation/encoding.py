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
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import imagesize
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.errors import DataError
from datamodules.images import ImageLoader
from datamodules.media import MediaLoader, load_visual
from datamodules.schema import Item
from datamodules.workers import is_worker_timeout, stop_workers
from embedders.multi_vector import pad_tokens
from embedders.prompts import Visual

log = logging.getLogger(__name__)

EncodeItem = tuple[Item, str, int, str, ImageLoader]
#: A side's items, as a progress bar names them.
PLURALS = {"query": "queries", "target": "targets"}


class NonFiniteEmbeddingError(ValueError):
    """The model returned NaN or ±Inf for an item: the weights (or the inference dtype) are broken."""


def describe_item(entry: EncodeItem, side: str) -> str:
    item, dataset, row, field, _ = entry
    image = f", image {item.image!r}" if item.image else f", video {item.video!r}" if item.video else \
        f", {len(item.pages)} pages" if item.pages else ""
    return f"dataset {dataset!r}, row {row} ({side} side, field {field!r}{image}, text {item.text[:60]!r})"


# ------------------------------------------------------------------------------------------- lengths
def _header_size(loader: ImageLoader, path: str, dataset: str, row: int, field: str) -> tuple[int, int]:
    resolved = loader.resolve(path)
    try:  # `imagesize` reads the size from the header bytes: ~15 µs against PIL's ~50 µs for opening the file
        # The stored size, as PIL gives it (the loader does not apply EXIF orientation: neither may the keys).
        width, height = imagesize.get(resolved, exif_rotation=False)
        if width > 0 and height > 0:
            return int(width), int(height)
    except Exception:  # a format it does not know, or a damaged header: PIL decides below
        pass
    try:
        with Image.open(resolved) as im:
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
    return Visual(images=len(item.pages) or int(bool(item.image)), videos=int(bool(item.video)))


#: Visual items whose sizes are read in this thread before deciding whether a thread pool pays for the rest.
PROBE_READS = 16
#: Mean seconds per file read (an image header, each page's, or a video's probe) above which the rest are read by a
#: thread pool.
SLOW_READ_S = 1e-3


def _read_sizes(entries: Sequence[EncodeItem], has_visual: Sequence[bool]) -> list:
    """`_visual_sizes` of every visual item (None for the others). The first `PROBE_READS` items are read in this
    thread (the first one untimed: it pays one-time costs such as loading a PIL plugin); only if the others took over
    `SLOW_READ_S` per file read on average (a network file system: the time is latency, not CPU) are the rest read by
    a thread pool. On a local disk a header read is ~15–50 µs of Python under the GIL, and a pool of threads made the
    reads slower, not faster (0.8 s instead of 0.2 s for the bundled eval's 3,532 images on 2 CPUs)."""
    sizes: list = [None] * len(entries)
    todo = [i for i, v in enumerate(has_visual) if v]
    probe, rest = todo[:PROBE_READS], todo[PROBE_READS:]
    if not probe:
        return sizes
    sizes[probe[0]] = _visual_sizes(entries[probe[0]])
    start = time.perf_counter()
    for i in probe[1:]:
        sizes[i] = _visual_sizes(entries[i])
    if not rest:
        return sizes
    reads = sum(max(1, len(entries[i][0].pages)) for i in probe[1:])
    if reads and (time.perf_counter() - start) / reads > SLOW_READ_S:
        with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
            for i, value in zip(rest, pool.map(lambda j: _visual_sizes(entries[j]), rest)):
                sizes[i] = value
    else:
        for i in rest:
            sizes[i] = _visual_sizes(entries[i])
    return sizes


#: Items whose formatted text is tokenised to calibrate the characters-per-token of the length keys.
LENGTH_SAMPLE = 64


def length_keys(entries: Sequence[EncodeItem], input_builder, side: str) -> list[tuple[int, int]]:
    """A sort key per item that orders items by how many tokens the processor will give them, without tokenising
    every item (the processor tokenises each item again when it is encoded, so exact keys would cost a second
    tokenisation of the whole set).

    Text: characters of the formatted text, converted to tokens with the characters-per-token ratio of a
    `LENGTH_SAMPLE`-item sample that is tokenised (so text and image tokens add up on one scale). Images: with a
    Qwen-style image processor (`get_number_of_image_patches`, `merge_size`) the exact image-token count, added to
    the text tokens; otherwise the image area as the primary key and text length second."""
    return measure_lengths(entries, input_builder, side)[0]


def measure_lengths(entries: Sequence[EncodeItem], input_builder, side: str, exact_tokens: bool = False
                    ) -> tuple[list[tuple[int, int]], list[int] | None]:
    """(`length_keys`, token counts). `exact_tokens=True` (token-budget batches) also returns the tokens the
    processor will give each item: the formatted text tokenised (every item: a second tokenisation, paid only when a
    budget is asked for) plus, for a Qwen-style image processor, each image's exact tokens (video frames counted as
    images: an upper bound), at most `max_length`; None where that cannot be known before decoding (items with a
    visual under another image processor)."""
    if not entries:
        return [], ([] if exact_tokens else None)
    has_visual = [e[0].has_visual for e in entries]
    all_sizes = _read_sizes(entries, has_visual)
    processor = getattr(input_builder, "processor", None)
    texts = [e[0].text for e in entries]
    if hasattr(input_builder, "format"):
        texts = input_builder.format(texts, [visual_descriptor(e[0]) for e in entries], side,
                                     **instruction_kwargs([e[0] for e in entries]))
    chars = [len(t) for t in texts]
    image_processor = getattr(processor, "image_processor", None)
    count = getattr(image_processor, "get_number_of_image_patches", None)
    qwen_style = count is not None and hasattr(image_processor, "merge_size")
    tok = _tokenizer_of(processor)
    exact = None
    if exact_tokens:
        if tok is None or (any(has_visual) and not qwen_style):
            return _keys_without_tokens(chars, all_sizes), None
        exact = [len(ids) for ids in tok(texts)["input_ids"]]
    if not qwen_style:
        keys = _keys_without_tokens(chars, all_sizes)
        if exact is not None:
            exact = [min(n, _max_length(input_builder)) for n in exact]
        return keys, exact
    text_tokens = chars
    if exact is not None:
        text_tokens = exact
    elif tok is not None:
        # Added tokens (<|image_pad|>, <|im_start|>, …) are one token each however long their text; the rest is
        # estimated at the characters per token of a spread sample of the items, tokenised.
        special = sorted(getattr(tok, "get_added_vocab", dict)(), key=len, reverse=True)
        pattern = re.compile("|".join(map(re.escape, special))) if special else None
        counted = [len(pattern.findall(t)) if pattern else 0 for t in texts]
        plain = [len(pattern.sub("", t)) if pattern else len(t) for t in texts]
        step = max(1, len(texts) // LENGTH_SAMPLE)
        sample = range(0, len(texts), step)[:LENGTH_SAMPLE]
        tokens = tok([texts[i] for i in sample], add_special_tokens=False)["input_ids"]
        per_token = max(sum(plain[i] for i in sample), 1) / max(sum(len(ids) - counted[i] for i, ids in zip(sample, tokens)), 1)
        text_tokens = [c + round(n / per_token) for c, n in zip(counted, plain)]
    # The formatted text holds one token per image, which the processor expands to the image's tokens; a video's
    # frames are counted as images (an upper bound: frame pairs share a temporal patch).
    merge = int(getattr(image_processor, "merge_size", 1) or 1) ** 2
    patches: dict[tuple[int, int], int] = {}  # per image size: a dataset's images often share a few sizes

    def image_tokens(w: int, h: int) -> int:
        if (w, h) not in patches:
            patches[w, h] = count(h, w) // merge - 1
        return patches[w, h]

    keys, totals = [], []
    for entry, n, c, sizes in zip(entries, text_tokens, chars, all_sizes):
        try:
            total = n + sum(image_tokens(w, h) for w, h in (sizes or ()))
        except ValueError as err:  # e.g. an aspect ratio the processor refuses (Qwen2-VL: over 200:1)
            raise refused_item(entry, err, sizes) from err
        keys.append((total, c))
        # Text is cut to max_length; a row with visuals keeps its visual tokens (its text is cut instead), so its
        # total is an upper bound, not capped.
        totals.append(total if sizes else min(total, _max_length(input_builder)))
    return keys, (totals if exact is not None else None)


def _keys_without_tokens(chars: list[int], all_sizes: list) -> list[tuple[int, int]]:
    """Keys for processors whose image tokens are unknown before decoding: image area first, text length second."""
    return [(sum(w * h for w, h in (sizes or ())), n) for n, sizes in zip(chars, all_sizes)]


def _max_length(input_builder) -> int:
    value = getattr(input_builder, "max_length", None)
    return int(value) if value else 1 << 62


def token_budget_batches(tokens: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Consecutive batches of positions 0..n-1 whose padded size (rows × the longest row's tokens) stays within
    `max_tokens` and whose rows stay within `max_rows`; each batch is filled as far as the next row allows (on
    length-sorted rows the longest batch comes first). A row longer than the budget on its own is a batch of
    one (the caller counts and logs those)."""
    if max_tokens < 1 or max_rows < 1:
        raise ValueError(f"max_tokens ({max_tokens}) and max_rows ({max_rows}) must be positive")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, n in enumerate(tokens):
        wider = max(longest, n)
        if current and (len(current) + 1 > max_rows or (len(current) + 1) * wider > max_tokens):
            batches.append(current)
            current, wider = [], n
        current.append(i)
        longest = wider
    if current:
        batches.append(current)
    return batches


def refused_item(entry: EncodeItem, err: Exception, sizes: Sequence[tuple[int, int]] | None = None) -> DataError:
    """The processor refused one item: name its dataset, row, field and file (with the image's size), as training's
    collation does (datamodules/collate.py)."""
    item, dataset, row, field, loader = entry
    if item.image:
        what = f"image {loader.resolve(item.image)}"
    elif item.video:
        what = f"video {loader.resolve(item.video)}"
    elif item.pages:
        what = f"{len(item.pages)} page images (first {loader.resolve(item.pages[0])})"
    else:
        what = "text"
    size = f" ({sizes[0][0]}x{sizes[0][1]} px)" if item.image and sizes else ""
    return DataError(f"cannot build model inputs from its {what}{size}: {type(err).__name__}: {err}", dataset, row,
                     field)


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
                    size = [image.size] if hasattr(image, "size") and isinstance(image.size, tuple) else None
                    raise refused_item(entry, one, size) from one
            raise DataError(f"the processor refused a batch of {len(batch)} {self.side}s "
                            f"({type(err).__name__}: {err}); first item: {describe_item(batch[0], self.side)}") from err


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def effective_workers(num_workers: int, shard: Sequence[EncodeItem], batches: int, cpus: int | None = None,
                      device: torch.device | None = None) -> int:
    """Workers decode images while the model runs; starting them costs a process each, and every batch crosses a
    process boundary. They pay only on cores the model leaves idle: on a GPU all CPUs but the main process's one;
    on the CPU only those beyond torch's compute threads (on a 2-core machine with 2 torch threads: none — one
    worker there halved the throughput). None below two batches per worker, without any image to decode, or once workers timed out in this process."""
    if _workers_failed:
        return 0
    cpus = available_cpus() if cpus is None else cpus
    busy = torch.get_num_threads() if device is None or device.type == "cpu" else 1
    workers = min(num_workers, cpus - busy)
    if workers <= 0 or batches < 2 * workers or not any(it.has_visual for it, *_ in shard):
        return 0
    return workers


#: Seconds the encoding waits for a batch from its DataLoader workers before it encodes the rest in this process.
WORKER_TIMEOUT_S = 300.0
#: Set once workers timed out in this process: later encodings use none (each new fork could stall again).
_workers_failed = False


def _batches_or_fallback(loader: DataLoader, collate, shard: Sequence[EncodeItem], batches: list[list[int]],
                         what: str):
    """The loader's batches, in order; if its workers give none for `WORKER_TIMEOUT_S`, they are killed and the
    remaining batches are collated in this process (a warning says so). Evaluation starts workers for every
    dataset side, and forking a process that has threads (gloo, queue feeders of the previous side's loader) can
    leave a child deadlocked in CPython's after-fork clean-up before it runs any code (seen under `trainer=ddp_cpu`
    on Python 3.11): alive, so the DataLoader would wait for it forever. A batch that is only slow costs nothing
    but the switch; errors raised while collating (a named DataError) pass through unchanged."""
    iterator = iter(loader)
    for done in range(len(batches)):
        try:
            inputs = next(iterator)
        except RuntimeError as err:
            if not is_worker_timeout(err):
                raise
            global _workers_failed
            _workers_failed = True
            left = len(batches) - done
            log.warning("%s: the DataLoader workers gave no batch in %.0f s (a worker stuck at start-up?); they are "
                        "stopped and the remaining %d batch(es) are encoded in this process, as is everything this "
                        "process encodes from now on", what, WORKER_TIMEOUT_S, left)
            stop_workers(iterator)
            for rows in batches[done:]:
                yield collate([shard[j] for j in rows])
            return
        yield inputs


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
                  desc: str | None = None, stats: dict | None = None, max_tokens: int | None = None
                  ) -> torch.Tensor:
    """Embed items → float32 [N, d] on CPU, row i = items[i] (whatever order they were encoded in); a multi-vector
    model gives [N, L, d], zero rows padding every item to the longest.

    `sort=True`: items are encoded longest first in batches of similar length (least padding; the longest
    batch comes first, so an out-of-memory batch size shows at once). `distributed=True` (every rank of an
    initialised process group calls this with the same `items`): rank r encodes sorted items r, r + world, …
    and every rank gets the whole matrix back; a failure on any rank is raised on every rank (no rank is left
    waiting in a collective). Non-finite embeddings raise `NonFiniteEmbeddingError` naming the item.
    `max_tokens`: batches hold at most this many padded tokens (rows × the longest row's tokens, counted exactly
    before decoding: `measure_lengths`) and at most `batch_size` rows (`token_budget_batches`); an item longer than
    the budget is encoded alone, counted in `stats["over_budget"]` and logged.
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

    tokens = None
    if sort or max_tokens:
        # Each rank measures a strided slice (image headers can sit on a network file system); all keys are
        # then shared so every rank derives the same global order (and every rank's batches).
        keys, tokens = sharded(lambda: measure_lengths(items[rank::world], builder, side, bool(max_tokens)))
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, (keys, tokens))
            keys, tokens = [None] * len(items), (None if any(t is None for _, t in parts) else [0] * len(items))
            for r, (part_keys, part_tokens) in enumerate(parts):
                keys[r::world] = part_keys
                if tokens is not None:
                    tokens[r::world] = part_tokens
        if max_tokens and tokens is None:
            raise ValueError(
                f"eval.max_tokens_per_batch={max_tokens}: the tokens of items with images or videos are known before "
                f"decoding only for Qwen-style image processors (Qwen2-VL, Qwen3-VL) and text-only models; "
                f"{type(getattr(builder, 'processor', None)).__name__} is neither. Set eval.max_tokens_per_batch=null "
                f"and size eval.batch_size instead")
    order = sorted(range(len(items)), key=lambda i: keys[i], reverse=True) if sort else list(range(len(items)))
    shard = [items[i] for i in order[rank::world]]

    def batches_of(positions: Sequence[int]) -> list[list[int]]:
        """Batches (positions in a shard) of the shard holding the global items `positions` (in `order`)."""
        if not max_tokens:
            return [list(range(s, min(s + batch_size, len(positions)))) for s in range(0, len(positions), batch_size)]
        return token_budget_batches([tokens[i] for i in positions], int(max_tokens), batch_size)

    batches = batches_of(order[rank::world])
    if max_tokens:
        over = sum(1 for b in batches if len(b) == 1 and tokens[order[rank::world][b[0]]] > max_tokens)
        if over:
            log.warning("%s: %d item(s) longer than eval.max_tokens_per_batch=%d on their own, each encoded alone",
                        desc or side, over, max_tokens)
            if stats is not None:
                stats["over_budget"] = stats.get("over_budget", 0) + over
    # One process writes each embedding straight to its caller position; a rank fills its shard in order.
    destination = order if world == 1 else list(range(len(shard)))

    # Under FSDP (`embedder.uniform_trace`) every forward all-gathers every unit: each rank runs as many batches
    # as the rank with the most (the counts follow from the sizes every rank knows: no exchange), repeating a
    # batch of its own (or, with an empty shard, of the first item) whose output is dropped.
    lockstep = getattr(embedder, "uniform_trace", False) and world > 1
    most = max(len(batches_of(order[r::world])) for r in range(world)) if lockstep else 0

    def pad_forwards(done: int) -> None:
        if done >= most:
            return
        filler = _ItemCollator(builder, side)([shard[j] for j in batches[-1]] if shard else items[:1])
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
        device = embedder.device
        # Own generator: creating the iterator (and seeding workers) must not draw from the global RNG.
        collate = _ItemCollator(builder, side)
        workers = effective_workers(num_workers, shard, len(batches), device=device)
        if workers:
            loader = _batches_or_fallback(
                DataLoader(_ItemDataset(shard), batch_sampler=batches, num_workers=workers, collate_fn=collate,
                           generator=torch.Generator(), pin_memory=device.type == "cuda", timeout=WORKER_TIMEOUT_S),
                collate, shard, batches, desc or side)
        else:  # in this process: no DataLoader machinery per batch
            loader = (collate([shard[j] for j in rows]) for rows in batches)
        label = (desc or f"encode {PLURALS.get(side, side + 's')}") + (f" (rank 0 of {world})" if world > 1 else "")
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
                    bad = ~torch.isfinite(emb).flatten(1).all(dim=1)
                    if bad.any():
                        entry = shard[batch_rows[int(bad.nonzero()[0])]]
                        raise NonFiniteEmbeddingError(
                            f"non-finite embedding (NaN/Inf) for {describe_item(entry, side)}; {int(bad.sum())} of "
                            f"{len(batch_rows)} items in its batch are non-finite. The model's weights or its "
                            "inference dtype are broken (fp16 overflow: use bfloat16 or float32); no score is "
                            "computed from non-finite embeddings")
                    if out is None:
                        out = torch.zeros(len(shard), *emb.shape[1:])
                    if emb.ndim == 3:  # multi-vector: token counts differ per batch
                        width = max(out.shape[1], emb.shape[1])
                        out, emb = pad_tokens(out, width), pad_tokens(emb, width)
                    out[[destination[j] for j in batch_rows]] = emb
                    if stats is not None:
                        stats["items"] = stats.get("items", 0) + len(batch_rows)
                        stats["batches"] = stats.get("batches", 0) + 1
                        if mask is not None:
                            stats["tokens"] = stats.get("tokens", 0) + int(mask.sum())
                            stats["positions"] = stats.get("positions", 0) + mask.numel()
                            stats["max_batch_positions"] = max(stats.get("max_batch_positions", 0), mask.numel())
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
        gathered = _gather_strided_any(result, len(items), embedder.device)  # in sorted order
        result = torch.empty_like(gathered)
        result[torch.tensor(order)] = gathered
    if stats is not None:
        stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - start
    return result


def _gather_strided_any(local: torch.Tensor, total: int, device: torch.device) -> torch.Tensor:
    """`gather_strided` for [n, d] and multi-vector [n, L, d] rows: token counts are first agreed on (the largest),
    every rank pads to it and the rows travel flattened. Collective."""
    tokens = torch.tensor([local.shape[1] if local.ndim == 3 else 0, local.shape[-1] if local.ndim == 3 else 0],
                          device=device)
    dist.all_reduce(tokens, op=dist.ReduceOp.MAX)
    width, dim = (int(v) for v in tokens.tolist())
    if width == 0:
        return gather_strided(local, total, device)
    local = pad_tokens(local, width) if local.ndim == 3 else torch.zeros(0, width, dim)
    return gather_strided(local.reshape(local.shape[0], -1), total, device).reshape(total, width, dim)


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
