"""The MMEB row schemas (METHODS §1.1, §1.2) and the one parser that turns raw rows into items.

Training rows: `qry`, `qry_image_path`, `pos_text`, `pos_image_path` and optionally `neg_text`,
`neg_image_path` (a string, or a list for several negatives). Evaluation rows: `qry_text`,
`qry_img_path`, `tgt_text` (list), `tgt_img_path` (list, parallel); the ground truth is index 0.
Empty image paths mean "no image".

Rows are read the way the reference (VLM2Vec v1, `src/dataset.py`) reads them:
- a text that holds the placeholder `<|image_1|>` while its image path is empty (MMEB-train WebQA
  queries) is kept as it is; how the placeholder is then rendered is the prompt's choice
  (`embedders/prompts.py`, `placeholder_without_image`), the same in training and evaluation;
- a training row whose query or positive has neither text nor image is skipped, as the reference
  skips it (`src/dataset.py:89`, "empty inputs"), and counted under a reason (`SkipRow`); an eval
  row with an empty query or candidate is skipped and counted the same way (the reference would
  encode an empty string);
- a missing value — null (parquet, JSON) or NaN (pandas) — means "no image" in an image-path column and
  "no negative" in `neg_text`; in a required text column (`qry`, `pos_text`, `qry_text`, `tgt_text`) it is an
  error naming the file, row and field, whether or not the row has an image: the file lost a value that the
  reference never sees missing (its rows write "" for "no text"), and training it as "" would be silent;
- a literal model token (`<|image_pad|>`, `<image>`, …) in a text is an error naming the row and
  field: the processor would count it as an image slot and fail far from the data.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import DataError

PLACEHOLDER = "<|image_1|>"
#: Where a video goes in MMEB-V2 text (VLM2Vec's VLM_VIDEO_TOKENS for Qwen2-VL: the video counterpart of PLACEHOLDER).
VIDEO_PLACEHOLDER = "<|video_1|>"
TRAIN_COLUMNS = ("qry", "qry_image_path", "pos_text", "pos_image_path")
TRAIN_NEGATIVE_COLUMNS = ("neg_text", "neg_image_path")
EVAL_COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")
#: Special tokens of the supported model families that a data text must not contain literally: the
#: processors treat them as image/video slots or chat structure, not as text.
RESERVED_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                   "<image>", "<video>")

#: Skip reasons (keys of the per-subset / per-dataset skip counts).
EMPTY_QUERY = "empty_query"
EMPTY_POSITIVE = "empty_positive"
EMPTY_CANDIDATE = "empty_candidate"


class SkipRow(Exception):
    """A row the reference skips; `reason` is the key it is counted under."""

    def __init__(self, reason: str, dataset: str, row: int, field: str):
        super().__init__(f"dataset {dataset!r}, row {row}, field {field!r}: {reason}")
        self.reason, self.dataset, self.row, self.field = reason, dataset, row, field


@dataclass(frozen=True)
class Item:
    """One side of a pair: text (may hold placeholders) and its visual input — a relative image path, a video
    (file or frame folder, `<|video_1|>` in the text), or several images (`pages`, `<|image_1|>`..`<|image_n|>`) —
    or none. `instruction` (MMEB-V2 readers) is the task instruction that `text` holds in the reference's
    composition `[<visual placeholder> ]instruction[ rest]` (VLM2Vec `process_input_text`): prompts that put the
    instruction elsewhere (Qwen3-VL-Embedding's system message, `prompt.instruction_as_system`) take it out of
    the text; every other prompt reads `text` as it is."""

    text: str
    image: str | None = None
    video: str | None = None
    pages: tuple[str, ...] = ()
    instruction: str | None = None

    def __post_init__(self):
        if sum(bool(x) for x in (self.image, self.video, self.pages)) > 1:
            raise ValueError(f"an item has one visual input (image, video or pages), got image={self.image!r}, "
                             f"video={self.video!r}, pages={self.pages!r}")
        object.__setattr__(self, "pages", tuple(self.pages))

    @property
    def key(self) -> int:
        """Stable 63-bit identity of (text, visual): equal keys mean identical targets."""
        ident = f"{self.text}\x00{self.image or ''}"
        if self.video or self.pages:  # image-only items keep the keys they always had
            ident += f"\x00{self.video or ''}\x00{'|'.join(self.pages)}"
        if self.instruction is not None:
            ident += f"\x00instruction\x00{self.instruction}"
        h = hashlib.blake2b(ident.encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF

    @property
    def has_visual(self) -> bool:
        return bool(self.image or self.video or self.pages)

    @property
    def placeholder_without_image(self) -> bool:
        return not self.has_visual and PLACEHOLDER in self.text


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
    """A query and its own candidates. `relevant`: the indices of the correct candidates (the ground truth is
    index 0 in MMEB; MMEB-V2's MomentSeeker has several positive clips, SSv2 may repeat its label); a row is a
    hit when its top-ranked candidate is any of them (VLM2Vec `eval.py`: `label_name` may be a list, hit@1 =
    the first prediction is in it)."""

    dataset: str
    row: int
    query: Item
    candidates: tuple[Item, ...]
    relevant: tuple[int, ...] = (0,)

    def __post_init__(self):
        rel = tuple(int(i) for i in self.relevant)
        if not rel or len(set(rel)) != len(rel) or not all(0 <= i < len(self.candidates) for i in rel):
            raise ValueError(f"dataset {self.dataset!r}, row {self.row}: relevant must be distinct candidate indices "
                             f"in 0..{len(self.candidates) - 1}, got {self.relevant!r}")
        object.__setattr__(self, "relevant", tuple(sorted(rel)))


@dataclass(frozen=True)
class CorpusTask:
    """A corpus-level retrieval task (MMEB-V2 `eval_type: global`): every query is ranked against the whole
    corpus and scored against graded relevance judgements (`qrels[query_id][corpus_id] = grade`, relevant when
    > 0), by `evaluation.retrieval.evaluate_corpus_retrieval`."""

    queries: tuple[Item, ...]
    query_ids: tuple[str, ...]
    corpus: tuple[Item, ...]
    corpus_ids: tuple[str, ...]
    qrels: dict[str, dict[str, float]]

    def __post_init__(self):
        if len(self.queries) != len(self.query_ids) or len(self.corpus) != len(self.corpus_ids):
            raise ValueError(f"{len(self.queries)} queries for {len(self.query_ids)} ids, {len(self.corpus)} corpus "
                             f"items for {len(self.corpus_ids)} ids")
        if len(set(self.corpus_ids)) != len(self.corpus_ids):
            raise ValueError("corpus ids must be unique")


def check_columns(columns: Sequence[str], required: Sequence[str], dataset: str, schema: str) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing} of the {schema} schema; found {list(columns)}. "
            f"The {schema} schema needs {list(required)}",
            dataset=dataset,
        )


def is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _as_str(value, dataset: str, row: int, field: str, nan_is_missing: bool = False) -> str:
    """A text cell. A missing value — null (how parquet and JSON write it) or NaN (how pandas writes it) — is ""
    where the column is optional (`nan_is_missing`: image paths, negatives) and an error in a required text."""
    if value is None:
        if nan_is_missing:
            return ""
        raise DataError("null (a missing value) where a text is required; write '' for 'no text' or drop the row",
                        dataset, row, field)
    if is_nan(value):
        if nan_is_missing:
            return ""
        raise DataError("NaN (a missing value, as pandas writes it) where a text is required; write '' for "
                        "'no text' or drop the row", dataset, row, field)
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__} {value!r:.60}", dataset, row, field)
    return value


def check_reserved(text: str, dataset: str, row: int, field: str) -> None:
    found = [t for t in RESERVED_TOKENS if t in text]
    if found:
        raise DataError(f"text contains the model token(s) {found} literally: processors read them as image/video "
                        f"slots. MMEB marks an image with {PLACEHOLDER}; replace or remove them: {text[:80]!r}",
                        dataset, row, field)


def make_item(text, image, dataset: str, row: int, text_field: str, image_field: str,
              skip_reason: str | None = None, nan_text_is_missing: bool = False, video=None,
              video_field: str | None = None) -> Item | None:
    """The item of one (text, image path[, video path]) cell group. An item with neither text nor a visual raises
    `SkipRow` (counted under `skip_reason`) when given, else returns None."""
    text = _as_str(text, dataset, row, text_field, nan_is_missing=nan_text_is_missing)
    image = _as_str(image, dataset, row, image_field, nan_is_missing=True).strip() or None
    video = _as_str(video, dataset, row, video_field or "video", nan_is_missing=True).strip() or None
    if image is not None and video is not None:
        raise DataError("a row side has both an image and a video; give it one of them", dataset, row,
                        f"{image_field}/{video_field}")
    if video is not None:
        check_reserved(text, dataset, row, text_field)
        return Item(text, video=video)
    if not text.strip() and image is None:
        if skip_reason is None:
            return None
        raise SkipRow(skip_reason, dataset, row, f"{text_field}/{image_field}")
    check_reserved(text, dataset, row, text_field)
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
        # No negative in this cell (the usual case in MMEB-train): "", None or NaN.
        item = make_item(t, im, dataset, index, "neg_text", "neg_image_path", nan_text_is_missing=True)
        if item is not None:
            items.append(item)
    return tuple(items)


def parse_train_row(row: dict, dataset: str, index: int, use_negatives: bool = True) -> TrainPair:
    """A TrainPair; raises `SkipRow` for a row the reference skips (empty query or positive)."""
    # Video subsets (MMEB-V2 training mixes) add `qry_video_path` / `pos_video_path` (a file or a frame folder).
    query = make_item(row.get("qry"), row.get("qry_image_path"), dataset, index, "qry", "qry_image_path",
                      skip_reason=EMPTY_QUERY, video=row.get("qry_video_path"), video_field="qry_video_path")
    positive = make_item(row.get("pos_text"), row.get("pos_image_path"), dataset, index, "pos_text",
                         "pos_image_path", skip_reason=EMPTY_POSITIVE, video=row.get("pos_video_path"),
                         video_field="pos_video_path")
    negatives = _negative_items(row, dataset, index) if use_negatives else ()
    return TrainPair(dataset, index, query, positive, negatives)


def parse_eval_row(row: dict, dataset: str, index: int) -> EvalRow:
    """An EvalRow; raises `SkipRow` for a row with an empty query or an empty candidate."""
    query = make_item(row.get("qry_text"), row.get("qry_img_path"), dataset, index, "qry_text", "qry_img_path",
                      skip_reason=EMPTY_QUERY)
    texts, images = row.get("tgt_text"), row.get("tgt_img_path")
    for name, value in (("tgt_text", texts), ("tgt_img_path", images)):
        if not isinstance(value, (list, tuple)):
            raise DataError(f"expected a list of candidates, got {type(value).__name__}", dataset, index, name)
    if len(texts) != len(images):
        raise DataError(f"tgt_text has {len(texts)} candidates but tgt_img_path has {len(images)}; "
                        "the two lists must be parallel", dataset, index, "tgt_text/tgt_img_path")
    if not texts:
        raise DataError("no candidates", dataset, index, "tgt_text")
    cands = tuple(make_item(t, im, dataset, index, "tgt_text", "tgt_img_path", skip_reason=EMPTY_CANDIDATE)
                  for t, im in zip(texts, images))
    return EvalRow(dataset, index, query, cands)


def rows_fingerprint(pairs) -> str:
    """Digest of a subset's rows in order (query and positive text/image): detects changed data."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(f"{p.query.text}\x00{p.query.image or ''}\x00{p.positive.text}\x00{p.positive.image or ''}\x01".encode())
    return h.hexdigest()[:32]
