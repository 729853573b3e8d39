"""The MMEB row schemas (METHODS §1.1, §1.2) and the one parser that turns raw rows into items.

Training rows: `qry`, `qry_image_path`, `pos_text`, `pos_image_path` and optionally `neg_text`,
`neg_image_path` (a string, or a list for several negatives). Evaluation rows: `qry_text`,
`qry_img_path`, `tgt_text` (list), `tgt_img_path` (list, parallel); the ground truth is index 0.
Empty image paths mean "no image". An item with neither text nor image is an error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import DataError

PLACEHOLDER = "<|image_1|>"
TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
TRAIN_NEGATIVE_COLUMNS = ("neg_text", "neg_image_path")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")


@dataclass(frozen=True)
class Item:
    """One side of a pair: text (may hold the image placeholder) and a relative image path or None."""

    text: str
    image: str | None = None

    @property
    def key(self) -> int:
        """Stable 63-bit identity of (text, image): equal keys mean identical targets."""
        h = hashlib.blake2b(f"{self.text}\x00{self.image or ''}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class TrainPair:
    subset: str
    row: int
    query: Item
    positive: Item
    negatives: tuple[Item, ...] = ()

    @property
    def uid(self) -> str:
        return f"{self.subset}/{self.row}"


@dataclass(frozen=True)
class EvalRow:
    dataset: str
    row: int
    query: Item
    candidates: tuple[Item, ...]


def check_columns(columns: Sequence[str], required: Sequence[str], dataset: str, schema: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing} of the {schema} schema; found {list(columns)}. "
            f"The {schema} schema needs {list(required)}",
            dataset=dataset,
        )


def _as_str(value, dataset: str, row: int, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__} {value!r:.60}", dataset, row, field)
    return value


def make_item(text, image, dataset: str, row: int, text_field: str, image_field: str) -> Item:
    text = _as_str(text, dataset, row, text_field)
    image = _as_str(image, dataset, row, image_field).strip() or None
    if not text.strip() and image is None:
        raise DataError("empty item: no text and no image", dataset, row, f"{text_field}/{image_field}")
    if image is None and PLACEHOLDER in text:
        raise DataError(f"text contains the image placeholder {PLACEHOLDER} but {image_field!r} is empty",
                        dataset, row, text_field)
    if text.count(PLACEHOLDER) > 1:
        raise DataError(f"text holds {text.count(PLACEHOLDER)} image placeholders; one is supported",
                        dataset, row, text_field)
    return Item(text, image)


def _negative_items(row: dict, dataset: str, index: int) -> tuple[Item, ...]:
    texts, images = row.get("neg_text"), row.get("neg_image_path")
    if isinstance(texts, list) or isinstance(images, list):
        texts = texts if isinstance(texts, list) else [texts] * len(images or [])
        images = images if isinstance(images, list) else [images] * len(texts)
        if len(texts) != len(images):
            raise DataError(f"neg_text has {len(texts)} entries but neg_image_path has {len(images)}",
                            dataset, index, "neg_text/neg_image_path")
    else:
        texts, images = [texts], [images]
    items = []
    for t, im in zip(texts, images):
        if not (t or "").strip() and not (im or "").strip():
            continue  # no negative in this row: the usual case in MMEB-train
        items.append(make_item(t, im, dataset, index, "neg_text", "neg_image_path"))
    return tuple(items)


def parse_train_row(row: dict, dataset: str, index: int, use_negatives: bool = True) -> TrainPair:
    query = make_item(row.get("qry"), row.get("qry_image_path"), dataset, index, "qry", "qry_image_path")
    positive = make_item(row.get("pos_text"), row.get("pos_image_path"), dataset, index, "pos_text", "pos_image_path")
    negatives = _negative_items(row, dataset, index) if use_negatives else ()
    return TrainPair(dataset, index, query, positive, negatives)


def parse_eval_row(row: dict, dataset: str, index: int) -> EvalRow:
    query = make_item(row.get("qry_text"), row.get("qry_img_path"), dataset, index, "qry_text", "qry_img_path")
    texts, images = row.get("tgt_text"), row.get("tgt_img_path")
    for name, value in (("tgt_text", texts), ("tgt_img_path", images)):
        if not isinstance(value, (list, tuple)):
            raise DataError(f"expected a list of candidates, got {type(value).__name__}", dataset, index, name)
    if len(texts) != len(images):
        raise DataError(f"tgt_text has {len(texts)} candidates but tgt_img_path has {len(images)}; "
                        "the two lists must be parallel", dataset, index, "tgt_text/tgt_img_path")
    if not texts:
        raise DataError("no candidates", dataset, index, "tgt_text")
    cands = tuple(make_item(t, im, dataset, index, "tgt_text", "tgt_img_path") for t, im in zip(texts, images))
    return EvalRow(dataset, index, query, cands)


def rows_fingerprint(pairs) -> str:
    """Digest of a subset's rows in order (query and positive text/image): detects changed data."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.query.text}\x00{p.query.image or ''}\x00{p.positive.text}\x00{p.positive.image or ''}\x01".encode())
    return h.hexdigest()[:32]
