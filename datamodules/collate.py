"""Collation: pairs → model inputs. Loads images, lets the embedder's `InputBuilder` format
prompts and call the processor, and splits rows into GradCache chunks *per example before
processing* (Qwen2-VL's `pixel_values` concatenates all images' patches, so it cannot be sliced).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from .errors import DataError
from .images import ImageLoader
from .media import load_visual
from .schema import Item, TrainPair
from .teacher_scores import teacher_tensors

log = logging.getLogger(__name__)


def chunk_bounds(n: int, chunk_size: int | None) -> list[tuple[int, int]]:
    if not chunk_size or chunk_size >= n:
        return [(0, n)]
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def grouped_chunks(lengths: Sequence[int], chunk_size: int | None, max_tokens: int | None
                   ) -> tuple[list[int], list[tuple[int, int]]]:
    """(order, bounds): the rows longest first (ties in row order) and the chunks cut from that order — at most
    `chunk_size` rows, and at most `max_tokens` padded tokens (rows × the chunk's longest row) per chunk; a row longer
    than the budget is a chunk of its own. Rows of similar length share a chunk, so each pads little."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bounds, start = [], 0
    for pos in range(1, len(order) + 1):
        rows = pos - start
        full = chunk_size is not None and rows >= chunk_size
        over = max_tokens is not None and pos < len(order) and (rows + 1) * lengths[order[start]] > max_tokens
        if pos == len(order) or full or over:
            bounds.append((start, pos))
            start = pos
    return order, bounds


class PairCollator:
    """Turns a list of TrainPair into {"query": [inputs…], "target": [inputs…], "target_keys", "ids", …}.

    `query`/`target` are lists of processor outputs, one per chunk of `chunk_size` rows (one chunk
    when GradCache is off). Targets are the B positives followed by the batch's hard negatives.
    With `teacher_scores` ({uid: (candidate keys, scores)}) the batch carries `teacher_keys` / `teacher_scores`
    [B, K] (losses/distillation.py); with `guide_input_builder` it carries `guide_query` / `guide_target`, the same
    rows built for a guide model (one chunk each: the guide embeds them without gradients).
    """

    def __init__(self, input_builder: Callable, image_loader: ImageLoader, chunk_size: int | None = None,
                 max_negatives_per_pair: int | None = None, teacher_scores: dict | None = None,
                 guide_input_builder: Callable | None = None, group_by_length: bool = True,
                 max_tokens_per_chunk: int | None = None):
        self.input_builder = input_builder
        self.image_loader = image_loader
        self.chunk_size = chunk_size
        # GradCache chunks (and token budgets) cut from rows ordered by length: the batch's `query_order` /
        # `target_order` give the row of each embedding, and the module puts them back (the loss sees row order).
        self.group_by_length = bool(group_by_length)
        self.max_tokens_per_chunk = max_tokens_per_chunk
        self.max_negatives_per_pair = max_negatives_per_pair
        self.teacher_scores = teacher_scores
        self.guide_input_builder = guide_input_builder

    def _image(self, item: Item, pair: TrainPair, field: str):
        # The visual input: an image, or (MediaLoader) a sampled video clip or a page list.
        if item.video:
            field = field.replace("_image_path", "_video_path")
        return load_visual(self.image_loader, item, pair.subset, pair.row, field)

    def _encode(self, items: Sequence[tuple[Item, TrainPair, str]], side: str, images: list,
                builder: Callable | None = None) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor | None]:
        """(model inputs, order) of `items`: with the student's builder, chunks of at most `chunk_size` rows and
        `max_tokens_per_chunk` padded tokens, cut from the rows ordered by length when there is more than one chunk
        (`order[k]`: the row of the k-th embedding; None: row order); with another builder one chunk in row order
        (a guide embeds without gradients, so GradCache's chunking does not apply to it)."""
        builder = builder or self.input_builder
        texts = [it.text for it, _, _ in items]
        order = None
        bounds = chunk_bounds(len(items), self.chunk_size if builder is self.input_builder else None)
        budget = self.max_tokens_per_chunk
        if builder is self.input_builder and self.group_by_length and (len(bounds) > 1 or budget is not None):
            rows, bounds = grouped_chunks(builder.token_counts(texts, images, side), self.chunk_size, budget)
            if rows != sorted(rows):
                order = torch.tensor(rows, dtype=torch.long)
                items, texts, images = [items[i] for i in rows], [texts[i] for i in rows], [images[i] for i in rows]
        out = []
        for s, e in bounds:
            try:
                out.append(builder(texts[s:e], images[s:e], side))
            except DataError:
                raise
            except ValueError as err:
                raise self._culprit(items[s:e], texts[s:e], images[s:e], side, err) from err
        return out, order

    def _culprit(self, items, texts, images, side: str, err: ValueError) -> DataError:
        """The processor refused a chunk (e.g. an image of extreme aspect ratio): name the first row that it
        refuses on its own, with its file; the whole chunk only when no single row fails."""
        for i, (item, pair, field) in enumerate(items):
            try:
                self.input_builder(texts[i : i + 1], images[i : i + 1], side)
            except ValueError as row_err:
                what = f"image {self.image_loader.resolve(item.image)}" if item.image else \
                    f"video {self.image_loader.resolve(item.video)}" if item.video else "text"
                size = f" ({images[i].width}x{images[i].height} px)" if item.image and images[i] is not None else ""
                return DataError(f"cannot build model inputs from its {what}{size}: {row_err}", pair.subset,
                                 pair.row, field)
        rows = [p.row for _, p, _ in items]
        return DataError(f"cannot build model inputs for rows {rows}: {err}", items[0][1].subset, None, items[0][2])

    def __call__(self, pairs: Sequence[TrainPair]) -> dict:
        queries = [(p.query, p, "qry_image_path") for p in pairs]
        targets = [(p.positive, p, "pos_image_path") for p in pairs]
        for p in pairs:
            negs = p.negatives if self.max_negatives_per_pair is None else p.negatives[: self.max_negatives_per_pair]
            targets.extend((n, p, "neg_image_path") for n in negs)
        # Visual inputs are loaded once, for the student and (when there is one) the guide.
        q_images = [self._image(it, p, f) for it, p, f in queries]
        t_images = [self._image(it, p, f) for it, p, f in targets]
        (query, q_order), (target, t_order) = (self._encode(queries, "query", q_images),
                                               self._encode(targets, "target", t_images))
        batch = {
            "query": query,
            "target": target,
            "target_keys": torch.tensor([it.key for it, _, _ in targets], dtype=torch.long),
            "num_pairs": len(pairs),
            "ids": [p.uid for p in pairs],
        }
        if q_order is not None:
            batch["query_order"] = q_order
        if t_order is not None:
            batch["target_order"] = t_order
        if self.teacher_scores is not None:
            batch["teacher_keys"], batch["teacher_scores"] = teacher_tensors(pairs, self.teacher_scores)
        if self.guide_input_builder is not None:
            batch["guide_query"] = self._encode(queries, "query", q_images, self.guide_input_builder)[0]
            batch["guide_target"] = self._encode(targets, "target", t_images, self.guide_input_builder)[0]
        return batch
