"""Readers for the MMEB-V2 training sources in their hub layouts: one function per training parser of the
reference (VLM2Vec main, `src/data/dataset/*.py`, as `experiments/public/train/train_alltasks.yaml` uses them),
each returning `TrainPair`s with the texts composed as the reference composes them, the rows it skips counted by
reason (`ReadResult`), and a `DataError` naming the source, row and field for anything else.

Parsers (`PARSERS`), read from the fetched reference code:
- `mmeb` (`mmeb_dataset.py`, `TIGER-Lab/MMEB-train`, one config per subset, split `original`): columns `qry`,
  `qry_image_path`, `pos_text`, `pos_image_path`[, `neg_text`, `neg_image_path`]; rows with an empty query or
  positive (no text and no image) are skipped ("empty inputs"). Image paths are relative to `media_root`
  (the reference's `image_dir`). Read by `datamodules.mmeb.read_train_subset`.
- `mmeb_neg` (branch v2.2, `mmeb_neg_dataset.py`, e.g. `VLM2Vec/B3-2b`): the same columns with `neg_text` /
  `neg_image_path` lists; `num_hardneg` of them per row (0: none). The reference draws them with an unseeded
  `random.sample` when a row has more; here the draw is seeded by (source, row), so runs are reproducible.
- `vidore` (`vidore_dataset.py`, `vidore/colpali_train_set`, split `train`): `query`, `image` (the page),
  `image_filename`, `answer`, …; query = `"<image> " + query` with the page, positive = the answer text (the
  row's `prompt` column is ignored, as in the reference: "most prompts too long").
- `visrag` (`visrag_dataset.py`, `openbmb/VisRAG-Ret-Train-In-domain-data`, split `train`): `query`, `image`,
  `source`; query = `f"{prompt} {query} "` (no prompt: `f"{query} "`), positive = `f"{prompt} " + " <image>"`
  (the page), prompts chosen by the row's `source` (`VISRAG_QUERY_PROMPTS`, `VISRAG_TARGET_PROMPTS`).
- `llavahound_caption` (`llavahound_dataset_caption.py`, ShareGPTVideo `video_caption_300k.jsonl`): JSON lines
  `{id, video, conversations: [{from, value}, …]}`, frames in `<video_frame_basedir>/<video>/`. `data_mode`
  `caption_retrieval`: query = the first turn with `<video>` → the video placeholder, on the frames; positive =
  the second turn. `video_retrieval`: query = `VRET_QUERY_PROMPT` + the second turn; positive =
  `VRET_TARGET_PROMPT` + the video placeholder, on the frames.
- `llavahound_qa` (`llavahound_dataset_qa.py`, `video_240k_caption_15k.jsonl`): query = `QA_QUERY_PROMPT` + the
  first turn (`<video>` → placeholder), on the frames; positive = the second turn.
  Both LLaVA-Hound parsers skip a row whose frame folder is missing or holds no frame (`no_frames`); the
  reference skips it silently, here it is counted and logged.

Every parser's instruction texts can be replaced per source (`query_instruction`, `target_instruction`; None = the
reference's, "" = none); the instruction is kept apart as well (`Item.instruction`) for prompts that move it.
Texts use the placeholders `<|image_1|>` / `<|video_1|>` where the reference puts the model's token; media paths
are made absolute (the source's `media_root` joined), so sources with different roots mix in one DataModule.
Pages stored inside parquet (vidore, visrag) are written once to `media_root` as `<row>-<content hash>.<png|jpg>`
(their own bytes, atomically) and read as files like every other image.

Not done, and why (layouts not confirmable from the fetched code): no training parser of the reference reads the
V2 image-task copy with separate instruction columns (`qry_inst`, `tgt_inst`: `ziyjiang/MMEB_Test_Instruct`,
an evaluation set with candidate lists; its readers are `datamodules.mmeb.compose_instruction_row`) — VLM2Vec-V2
trains its image tasks on `TIGER-Lab/MMEB-train` through `mmeb`, so no training reader for such a copy is
invented here. `docmatix` (`HuggingFaceM4/Docmatix`) is not in the V2 recipe and is not read. The reference's
`datasets.map(batched=True, batch_size=128, drop_last_batch=True)` of the vidore, visrag and LLaVA-Hound parsers
drops up to 127 trailing rows per stream shard, a count that depends on the worker and rank layout; it is an
artefact of streaming, not a row the data lacks, so those rows are kept here (and logged as `reference_tail`).
The YAML's `num_rows` is informational in the reference (no parser reads it); the cap is `num_sample_per_subset`
(`max_samples` here: the first N rows, as the reference's `select(range(N))`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import DataError
from .mmeb import ReadResult, _report, _rows, describe_source, load_split, local_cache_dir, read_train_subset
from .schema import (
    PLACEHOLDER,
    VIDEO_PLACEHOLDER,
    Item,
    SkipRow,
    TrainPair,
    check_columns,
    check_reserved,
    parse_train_row,
)
from .video import FRAME_EXTENSIONS

log = logging.getLogger(__name__)

#: `llavahound_dataset_caption.py` VRET_QRY_PROMPT / VRET_TGT_PROMPT.
VRET_QUERY_PROMPT = "Find a video that contains the following visual content: "
VRET_TARGET_PROMPT = "Understand the content of the provided video: "
#: `llavahound_dataset_qa.py` QA_QUERY_PROMPT.
QA_QUERY_PROMPT = "Answer a question based on the content of a video. "
#: `visrag_dataset.py` query_source2prompt / target_source2prompt (by the row's `source`).
VISRAG_QUERY_PROMPTS = {
    "NeurIPS Papers": "This query is about a research paper from NeurIPS, a leading AI/ML conference. The document contains technical discussions, methodologies, and findings. Identify relevant papers and sections that address the query: ",  # noqa: E501
    "Textbooks": "This query is related to a college-level textbook, which provides structured explanations, definitions, and examples. Find the most relevant concepts or explanations that address the query: ",  # noqa: E501
    "ICML Papers": "This query is about a research paper from ICML, a leading AI/ML conference. The document contains theoretical insights, experiments, and applications. Identify relevant papers and sections that best answer the query: ",  # noqa: E501
    "Manuallib": "This query pertains to a product manual, which contains detailed technical specifications, usage instructions, and troubleshooting steps. Find the most relevant section that answers the query: ",  # noqa: E501
    "ArxivQA": "This query is related to retrieving a relevant figure from an ArXiv research paper. The retrieved figure should contain scientific plots, mathematical visualizations, or experimental results that best address the query: ",  # noqa: E501
    "ChartQA": "This query is related to retrieving a relevant chart that visually represents numerical or categorical data. The retrieved chart should contain bar graphs, line charts, or other visual elements necessary to analyze trends, compare values, or extract insights related to the query: ",  # noqa: E501
    "MP-DocVQA": "This query is related to retrieving a relevant page from a multi-page document, such as reports, invoices, or research papers. The retrieved document should contain text, tables, or structured information necessary to answer the query: ",  # noqa: E501
    "InfoVQA": "This query is related to retrieving an infographic that visually presents statistical or factual information using charts, icons, and structured layouts. The retrieved image should contain the necessary visual elements to provide the best context for answering the query: ",  # noqa: E501
    "PlotQA": "This query relates to retrieving a relevant plot or chart that visually represents numerical data. The retrieved figure should contain the necessary information to analyze trends, compare values, or extract key insights related to the query: ",  # noqa: E501
    "SlideVQA": "This query is related to retrieving a relevant presentation slide that visually presents structured information. The retrieved slide should contain the necessary text, charts, or graphics to provide the best answer to the query: ",  # noqa: E501
}
VISRAG_TARGET_PROMPTS = {
    "Textbooks": "A textbook page with structured educational content and explanations.",
    "ICML Papers": "A research paper from ICML, covering machine learning topics.",
    "NeurIPS Papers": "A research paper from NeurIPS on AI and ML topics.",
    "Manuallib": "A product manual page with technical specifications and instructions.",
    "InfoVQA": "An infographic with structured data, charts, and annotations.",
    "PlotQA": "A numerical data visualization, such as bar charts or line graphs.",
    "SlideVQA": "A presentation slide with text, bullet points, and diagrams.",
    "ArxivQA": "A figure from a research paper, including plots or experimental results.",
    "MP-DocVQA": "A page from a multi-page document with text or tables.",
    "ChartQA": "A statistical chart comparing values or analyzing trends.",
}
DATA_MODES = ("caption_retrieval", "video_retrieval")
NO_FRAMES = "no_frames"


@dataclass(frozen=True)
class TrainSource:
    """One source of a training mixture (an entry of `data.sources`): where its rows are and how to read them.

    `source`: hub id or local snapshot (mmeb, mmeb_neg, vidore, visrag) or a `.jsonl` file (LLaVA-Hound);
    `subset`: the hub config (mmeb); `media_root`: images / frame folders relative to it (the reference's
    `image_dir` / `video_frame_basedir`; for vidore and visrag where pages are written); `max_samples`: the first
    N rows (`num_sample_per_subset`); `weight`: the sampling weight (read by the sampler); `negatives`: read the
    hard-negative columns (mmeb) / how many per row (`num_hardneg` of mmeb_neg; 0 or false: none)."""

    name: str
    parser: str
    source: str
    subset: str | None = None
    split: str | None = None
    media_root: str | None = None
    weight: float = 1.0
    max_samples: int | None = None
    negatives: bool | int = True
    data_mode: str | None = None
    query_instruction: str | None = None
    target_instruction: str | None = None

    def __post_init__(self):
        if self.parser not in PARSERS:
            raise DataError(f"unknown parser {self.parser!r}; known: {sorted(PARSERS)}", dataset=self.name,
                            field="parser")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
            raise DataError(f"weight must be a finite number ≥ 0, got {w!r}", dataset=self.name, field="weight")
        m = self.max_samples
        if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
            raise DataError(f"max_samples must be an integer ≥ 1 or null, got {m!r}", dataset=self.name,
                            field="max_samples")
        if self.parser == "llavahound_caption" and (self.data_mode or "caption_retrieval") not in DATA_MODES:
            raise DataError(f"data_mode must be one of {DATA_MODES}, got {self.data_mode!r}", dataset=self.name,
                            field="data_mode")
        if self.parser in ("mmeb", "mmeb_neg") and not self.subset:
            raise DataError("an MMEB-train source needs `subset` (the hub config, e.g. ImageNet_1K)",
                            dataset=self.name, field="subset")

    @property
    def num_negatives(self) -> int | None:
        """Hard negatives kept per row: None = all the row has, 0 = none."""
        if self.negatives is True:
            return None
        return int(self.negatives or 0)


def _abs(root: str | None, rel: str | None) -> str | None:
    if not rel:
        return rel
    if root is None or os.path.isabs(rel):
        return rel
    return str(Path(root).expanduser().absolute() / rel)


def _rooted(item: Item, root: str | None) -> Item:
    return replace(item, image=_abs(root, item.image), video=_abs(root, item.video),
                   pages=tuple(_abs(root, p) for p in item.pages))


def _with_instruction(text: str, instruction: str) -> Item:
    return Item(text, instruction=instruction or None)


# ------------------------------------------------------------------------------------------------ MMEB-train
def read_mmeb(s: TrainSource) -> ReadResult:
    read = read_train_subset(s.source, s.subset, s.split or "original", s.max_samples,
                             use_negatives=s.num_negatives != 0)
    rows = [_renamed(p, s) for p in read.rows]
    if s.num_negatives:
        rows = [replace(p, negatives=p.negatives[: s.num_negatives]) for p in rows]
    return ReadResult(rows, read.skipped, read.notes)


def _renamed(p: TrainPair, s: TrainSource) -> TrainPair:
    return replace(p, subset=s.name, query=_rooted(p.query, s.media_root), positive=_rooted(p.positive, s.media_root),
                   negatives=tuple(_rooted(n, s.media_root) for n in p.negatives))


def read_mmeb_neg(s: TrainSource) -> ReadResult:
    """MMEB-train columns with list-valued negatives (B3's copies); `negatives` = the reference's `num_hardneg`."""
    ds = load_split(s.source, s.subset, s.split or "train", ("qry", "qry_image_path", "pos_text", "pos_image_path"),
                    "MMEB-train (hard negatives)")
    k = s.num_negatives
    pairs, skipped, total = [], Counter(), 0
    for i, row in _rows(ds, s.max_samples):
        total += 1
        texts, paths = row.get("neg_text"), row.get("neg_image_path")
        if k != 0 and texts is not None and not isinstance(texts, list):
            raise DataError(f"neg_text must be a list in the {s.parser} layout, got {type(texts).__name__}",
                            s.name, i, "neg_text")
        if k == 0:
            row = {**row, "neg_text": [], "neg_image_path": []}
        elif k is not None and texts and len(texts) > k:
            pick = sorted(random.Random(f"{s.name}/{i}").sample(range(len(texts)), k))
            row = {**row, "neg_text": [texts[j] for j in pick],
                   "neg_image_path": [paths[j] for j in pick] if isinstance(paths, list) else paths}
        try:
            pairs.append(_renamed(parse_train_row(row, s.name, i, use_negatives=k != 0), s))
        except SkipRow as skip:
            skipped[skip.reason] += 1
    result = ReadResult(pairs, dict(skipped), {})
    _report("source", s.name, s.split or "train", total, result)
    return result


# ------------------------------------------------------------------------------------------------ parquet sources
def _table(s: TrainSource, split: str, columns):
    """The rows of a single-config repo (vidore, visrag): a hub id, or a local snapshot (README `configs:` or
    `data/<split>-*.parquet`), image columns left undecoded ({bytes, path})."""
    import datasets

    source = s.source
    if s.subset:
        ds = load_split(source, s.subset, split, columns, f"{s.parser} training set")
    else:
        local = os.path.isdir(source)
        if not local and (source.startswith(("/", ".", "~")) or source.count("/") != 1):
            raise DataError(f"data source {source} is not an existing directory nor a hub id (owner/name)",
                            dataset=s.name, field="source")
        kwargs = {"cache_dir": local_cache_dir(source, "data")} if local else {}
        try:
            ds = datasets.load_dataset(source, split=split, **kwargs)
        except Exception as err:
            raise DataError(f"`datasets` could not read split {split!r} of {describe_source(source)} "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the "
                            "snapshot (re-download it) or the split name", dataset=s.name, field="source") from err
        check_columns(ds.column_names, columns, s.name, f"{s.parser} training set")
    if len(ds) == 0:
        raise DataError(f"split {split!r} of {describe_source(source)} has 0 rows", dataset=s.name)
    if s.max_samples is not None and s.max_samples < len(ds):
        ds = ds.select(range(s.max_samples))
    if "image" in ds.column_names:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    return ds


def _image_suffix(data: bytes) -> str:
    return ".png" if data[:8] == b"\x89PNG\r\n\x1a\n" else ".jpg" if data[:2] == b"\xff\xd8" else ".img"


def _stored_page(s: TrainSource, row: int, image) -> str:
    """The row's page, written once under media_root as its own bytes; returns the absolute path."""
    if s.media_root is None:
        raise DataError(f"the {s.parser} parser stores its pages as files: set media_root (a writable directory)",
                        dataset=s.name, field="media_root")
    if not isinstance(image, dict) or not (image.get("bytes") or image.get("path")):
        raise DataError(f"no page image ({type(image).__name__}); the reference needs one per row", s.name, row,
                        "image")
    data = image.get("bytes")
    if data is None:  # a path inside the snapshot (datasets keeps external files as paths)
        try:
            data = Path(image["path"]).read_bytes()
        except OSError as e:
            raise DataError(f"page image {image['path']} cannot be read ({e})", s.name, row, "image") from None
    root = Path(s.media_root).expanduser().absolute()
    # Named by content: a re-downloaded or regenerated source never reuses a stale page of the same row.
    path = root / f"{row:08d}-{hashlib.sha1(data).hexdigest()[:12]}{_image_suffix(data)}"
    if not path.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{path.name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, path)  # atomic: ranks writing the same page never expose half a file
    return str(path)


def _str(value, s: TrainSource, row: int, field: str, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__} {value!r:.60}", s.name, row, field)
    check_reserved(value, s.name, row, field)
    return value


def _note_tail(s: TrainSource, n: int, notes: Counter) -> None:
    if n % 128:
        notes["reference_tail"] = n % 128  # rows the reference's drop_last_batch map could drop; kept here


def read_vidore(s: TrainSource) -> ReadResult:
    ds = _table(s, s.split or "train", ("query", "image", "answer"))
    instruction = s.query_instruction or ""  # the reference passes prompt="" (its `prompt` column is ignored)
    target = s.target_instruction or ""
    pairs, notes = [], Counter()
    for i, row in enumerate(ds):
        query = _str(row["query"], s, i, "query")
        answer = _str(row["answer"], s, i, "answer")
        # process_query(query, prompt, image_token): f"{prompt} {token} {query}" / f"{token} {query}"
        text = f"{instruction} {PLACEHOLDER} {query}" if instruction else f"{PLACEHOLDER} {query}"
        q = Item(text, image=_stored_page(s, i, row["image"]), instruction=instruction or None)
        pos = Item(f"{target} {answer}" if target else answer, instruction=target or None)
        if not answer.strip():
            notes["empty_answer_kept"] += 1  # the reference encodes it as it is
        pairs.append(TrainPair(s.name, i, q, pos))
    _note_tail(s, len(pairs), notes)
    return ReadResult(pairs, {}, dict(notes))


def read_visrag(s: TrainSource) -> ReadResult:
    ds = _table(s, s.split or "train", ("query", "image", "source"))
    pairs, notes = [], Counter()
    for i, row in enumerate(ds):
        query = _str(row["query"], s, i, "query")
        origin = _str(row["source"], s, i, "source", required=False)
        q_prompt = s.query_instruction if s.query_instruction is not None else VISRAG_QUERY_PROMPTS.get(origin, "")
        t_prompt = s.target_instruction if s.target_instruction is not None else VISRAG_TARGET_PROMPTS.get(origin, "")
        if origin not in VISRAG_QUERY_PROMPTS and s.query_instruction is None:
            notes["source_without_prompt"] += 1
        # process_query(query, prompt, image_token=""): f"{prompt} {query} {token}" / f"{query} {token}"
        q_text = f"{q_prompt} {query} " if q_prompt else f"{query} "
        p_text = f"{t_prompt}  {PLACEHOLDER}" if t_prompt else f" {PLACEHOLDER}"
        pos = Item(p_text, image=_stored_page(s, i, row["image"]), instruction=t_prompt or None)
        pairs.append(TrainPair(s.name, i, _with_instruction(q_text, q_prompt), pos))
    _note_tail(s, len(pairs), notes)
    return ReadResult(pairs, {}, dict(notes))


# ------------------------------------------------------------------------------------------------ LLaVA-Hound
def _jsonl(s: TrainSource) -> list[dict]:
    path = Path(s.source).expanduser()
    if not path.is_file():
        raise DataError(f"LLaVA-Hound annotation file {path} not found (the reference's dataset_path, e.g. "
                        "video_instruction/train/sft/video_caption_300k.jsonl of ShareGPTVideo/"
                        "train_video_and_instruction)", dataset=s.name, field="source")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no} is not valid JSON ({e.msg}); re-download the file",
                                dataset=s.name, row=len(rows)) from None
            if s.max_samples is not None and len(rows) >= s.max_samples:
                break
    if not rows:
        raise DataError(f"{path} holds no rows", dataset=s.name)
    return rows


def _turns(row: dict, s: TrainSource, i: int) -> tuple[str, str, str]:
    for key in ("id", "video", "conversations"):
        if key not in row:
            raise DataError(f"missing key {key!r} (LLaVA-Hound rows have id, video, conversations)", s.name, i, key)
    conv = row["conversations"]
    if not isinstance(conv, list) or len(conv) < 2 or not all(isinstance(t, dict) and "value" in t for t in conv[:2]):
        raise DataError("conversations must be a list of at least two {from, value} turns", s.name, i, "conversations")
    video = row["video"]
    if not isinstance(video, str) or not video:
        raise DataError(f"video must be a non-empty string, got {video!r}", s.name, i, "video")
    first = conv[0]["value"]
    if not isinstance(first, str):
        raise DataError(f"expected a string, got {type(first).__name__}", s.name, i, "conversations[0].value")
    check_reserved(first.replace("<video>", ""), s.name, i, "conversations[0].value")  # <video> is the slot mark
    second = _str(conv[1]["value"], s, i, "conversations[1].value")
    return video, first.replace("<video>", VIDEO_PLACEHOLDER), second


def _frames_of(s: TrainSource, video: str) -> str | None:
    """The frame folder `<media_root>/<video>` when it holds a frame (`process_video_frames` finds some), else None."""
    folder = Path(s.media_root).expanduser().absolute() / video if s.media_root else Path(video)
    try:
        return str(folder) if any(p.suffix.lower() in FRAME_EXTENSIONS for p in folder.iterdir()) else None
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_llavahound(s: TrainSource, make) -> ReadResult:
    pairs, skipped, missing = [], Counter(), []
    rows = _jsonl(s)
    for i, row in enumerate(rows):
        video, first, second = _turns(row, s, i)
        frames = _frames_of(s, video)
        if frames is None:  # the reference: `if len(frame_paths) == 0: continue`
            skipped[NO_FRAMES] += 1
            missing.append(video)
            continue
        q, pos = make(first, second, frames)
        pairs.append(TrainPair(s.name, i, q, pos))
    if skipped:
        log.warning("source %s: skipped %d of %d rows whose frame folder under %s is missing or empty, as the "
                    "reference skips them (e.g. %s)", s.name, skipped[NO_FRAMES], len(rows), s.media_root, missing[:3])
    notes = Counter()
    _note_tail(s, len(pairs), notes)
    return ReadResult(pairs, dict(skipped), dict(notes))


def read_llavahound_caption(s: TrainSource) -> ReadResult:
    mode = s.data_mode or "caption_retrieval"
    if mode == "caption_retrieval":
        def make(first, second, frames):
            instruction = s.query_instruction or ""
            return Item(instruction + first, video=frames, instruction=instruction or None), \
                _with_instruction((s.target_instruction or "") + second, s.target_instruction or "")
    else:
        q_inst = VRET_QUERY_PROMPT if s.query_instruction is None else s.query_instruction
        t_inst = VRET_TARGET_PROMPT if s.target_instruction is None else s.target_instruction

        def make(first, second, frames):
            return _with_instruction(q_inst + second, q_inst), \
                Item(t_inst + VIDEO_PLACEHOLDER, video=frames, instruction=t_inst or None)
    return _read_llavahound(s, make)


def read_llavahound_qa(s: TrainSource) -> ReadResult:
    q_inst = QA_QUERY_PROMPT if s.query_instruction is None else s.query_instruction
    t_inst = s.target_instruction or ""

    def make(first, second, frames):
        return Item(q_inst + first, video=frames, instruction=q_inst or None), _with_instruction(t_inst + second, t_inst)
    return _read_llavahound(s, make)


PARSERS = {
    "mmeb": read_mmeb, "mmeb_neg": read_mmeb_neg, "vidore": read_vidore, "visrag": read_visrag,
    "llavahound_caption": read_llavahound_caption, "llavahound_qa": read_llavahound_qa,
}


def read_source(s: TrainSource) -> ReadResult:
    """The pairs of one mixture source (subset = its name), skipped rows counted by reason; refuses a source
    left with no rows."""
    result = PARSERS[s.parser](s)
    for reason, n in result.notes.items():
        if reason == "reference_tail":
            log.info("source %s: %d trailing row(s) would fall in the reference's dropped partial map batch of 128; "
                     "kept", s.name, n)
        elif reason != "placeholder_without_image":
            log.info("source %s: %s: %d row(s)", s.name, reason, n)
    if not result.rows:
        raise DataError(f"source has no usable rows ({describe_source(s.source)}; skipped: {result.skipped})",
                        dataset=s.name)
    return result


def sources_from_config(sources: Mapping[str, Mapping]) -> list[TrainSource]:
    """`data.sources` ({name: {parser, source, …}}) as TrainSources, unknown keys refused by name."""
    known = set(TrainSource.__dataclass_fields__) - {"name"}
    out = []
    if not isinstance(sources, Mapping) or not sources:
        raise DataError("data.sources must map source names to {parser, source, weight, …}; it is empty or not a "
                        "mapping", field="sources")
    for name, cfg in sources.items():
        if not isinstance(cfg, Mapping):
            raise DataError(f"expected a mapping {{parser, source, …}}, got {cfg!r:.60}", dataset=str(name))
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise DataError(f"unknown key(s) {unknown}; known: {sorted(known)}", dataset=str(name))
        missing = [k for k in ("parser", "source") if not cfg.get(k)]
        if missing:
            raise DataError(f"missing {missing}", dataset=str(name))
        out.append(TrainSource(str(name), **dict(cfg)))
    return out
