"""Readers for the MMEB-V2 hub layouts: one function per reference parser (`V2Dataset.parser`), each returning
the rows of a dataset that ranks its own candidates, or a `CorpusTask` for one that ranks a whole corpus, with
skipped rows counted by reason. Texts are composed as the reference composes them (VLM2Vec main,
`src/data/eval_dataset/*.py`, `process_input_text`: "<video/image token> " + instruction [+ " " + text]), with
the placeholders `<|video_1|>` / `<|image_1|>` where the reference puts the model's token, so every prompt format
renders them.

Media paths: a dataset's items are relative to its `root` (`EvalRead.root`): the image root for image and
visual-document tasks, the unpacked MMEB-V2 directory (`data_basedir`) for video tasks. A video is read from its
frame folder `<frame_root>/<video id>` when that exists (the reference extracts frames once and then reads the
folder), else from the video file. Visual-document corpus images come decoded from parquet and are written once to
`<image_root>/<corpus-id>.png` (VisRAG: the reference's shortened name) so they are read like any other image.

Implemented parsers: all of the reference's — the five image parsers (instruction copy,
`datamodules.mmeb.compose_instruction_row`), `video_classification`, `ssv2`, `nextqa`, `videomme`, `mvbench`,
`egoschema`, `activitynetqa`, `msrvtt`, `didemo`, `msvd`, `vatex`, `youcook2`, `moment_retrieval`,
`momentseeker`, `vidore`, `visrag`. A row the reference could not score (its answer is not among its candidates, a
MomentSeeker row without a positive clip) raises a DataError naming dataset, row and field; the dataset is then
reported as failed and the others are scored. Video items carry their task instruction apart as well
(`Item.instruction`), for prompts that place it elsewhere (Qwen3-VL-Embedding's system message).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .mmeb import load_split, local_cache_dir, read_eval_dataset
from .mmeb_v2 import V2Dataset
from .mmeb_v2_gme import GME
from .mmeb_v2_gme import image_row as gme_image_row
from .mmeb_v2_gme import recompose as gme_recompose
from .mmeb_v2_qwen3 import NUM_CLIP_FRAMES as QWEN3_NUM_CLIP_FRAMES
from .mmeb_v2_qwen3 import NUM_FRAMES as QWEN3_NUM_FRAMES
from .mmeb_v2_qwen3 import QWEN3, check_composition, compose, image_row, recompose
from .schema import CorpusTask, EvalRow, Item, check_columns
from .video import FRAME_EXTENSIONS

log = logging.getLogger(__name__)


#: VLM2Vec `video_classification_utils.DATASET_INSTRUCTION`, by the reference's dataset name.
VIDEO_CLS_INSTRUCTION = {
    "Kinetics-700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
DEFAULT_VIDEO_CLS_INSTRUCTION = VIDEO_CLS_INSTRUCTION["Kinetics-700"]
#: `msrvtt_dataset.py` TASK_INST_QRY / TASK_INST_TGT.
VIDEO_RET_QUERY = "Find a video that contains the following visual content:"
VIDEO_TARGET = "Understand the content of the provided video."
#: `nextqa_dataset.py` TASK_PROMPT.
VIDEO_QA_PROMPT = ("Given a video and a question, select the most accurate answer from the provided candidates. "
                   "Return only the exact text of your chosen answer. Question: ")
#: `moment_retrieval_datasets.py` TASK_INST_QRY.
MOMENT_QUERY = "Find the clip that corresponds to the described scene in the given video:"
#: `vidore_dataset.py` / `visrag_dataset.py` TASK_INST_QRY / TASK_INST_TGT.
VISDOC_QUERY = "Find a document image that matches the given query:"
VISDOC_TARGET = "Understand the content of the provided document image."

NO_RELEVANT = "no_relevant_document"


@dataclass
class EvalRead:
    """One dataset as read: `rows` (own candidates, ground truth at index 0) or `task` (whole corpus); `root` is
    what its items' media paths are relative to."""

    root: str
    rows: list[EvalRow] = field(default_factory=list)
    task: CorpusTask | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    num_frames: int = 8
    max_frames_saved: int | None = 64
    frame_saving: str = "spread"
    candidate_num_frames: int | None = None   # frames per candidate video when not num_frames


@dataclass(frozen=True)
class SuitePaths:
    """Suite-level settings: the unpacked MMEB-V2 directory, local hub snapshots (`<owner>/<name>/` under it, or
    None for the hub), a `num_frames` override for every video dataset, video label sets by dataset, and whose
    evaluator the items are composed as (`composition`: `vlm2vec`, or `qwen3vl_embedding`,
    `datamodules/mmeb_v2_qwen3.py`, or `gme`, `datamodules/mmeb_v2_gme.py`)."""

    data_basedir: str
    hub_snapshots: str | None = None
    num_frames: int | None = None
    labels: Mapping[str, list[str]] = field(default_factory=dict)
    composition: str = "vlm2vec"

    def __post_init__(self):
        check_composition(self.composition)

    def source(self, d: V2Dataset) -> str:
        return str(Path(self.hub_snapshots) / d.source) if self.hub_snapshots else d.source

    def media(self, rel: str) -> Path:
        return Path(self.data_basedir) / rel


def _limit(rows: list, max_rows: int | None) -> list:
    return rows if max_rows is None else rows[: int(max_rows)]


def _table(d: V2Dataset, paths: SuitePaths, config: str, columns, split: str | None = None):
    """One config/split of the dataset's repo. A local snapshot whose data sit in `data/` (the hub's single-config
    layout, as the video repos have) is read through its README's `configs:`; any other layout through
    `datamodules.mmeb.load_split`, which checks the files first."""
    source, split = paths.source(d), split or d.split
    if Path(source).is_dir() and not (Path(source) / config).is_dir() and (Path(source) / "data").is_dir():
        import datasets

        try:
            ds = datasets.load_dataset(source, split=split, cache_dir=local_cache_dir(source, "data"))
        except Exception as err:
            raise DataError(f"`datasets` could not read split {split!r} of {source} ({type(err).__name__}: {err}); "
                            "re-download the snapshot", dataset=d.name) from err
        check_columns(ds.column_names, columns, d.name, f"MMEB-V2 {d.parser}")
        if len(ds) == 0:
            raise DataError(f"split {split!r} of {source} has 0 rows", dataset=d.name)
        return ds
    return load_split(source, config, split, columns, f"MMEB-V2 {d.parser}")


def _records(ds, max_rows: int | None) -> list[dict]:
    n = len(ds) if max_rows is None else min(len(ds), int(max_rows))
    cols = (ds.select(range(n)) if n < len(ds) else ds).to_dict()
    return [{c: cols[c][i] for c in cols} for i in range(n)]


def _frames(d: V2Dataset, paths: SuitePaths) -> tuple[int, int | None]:
    own = QWEN3_NUM_FRAMES if paths.composition == QWEN3 else None   # its video.yaml: 64 for every dataset
    n = paths.num_frames or own or d.media.get("num_frames") or d.media.get("num_video_frames") or 8
    return int(n), d.media.get("max_frames_saved", 64)


def _has_frames(folder: Path) -> bool:
    """A frame folder the reference reads instead of the video: it exists and holds a frame image (an empty one
    makes the reference extract the frames from the video again)."""
    return folder.is_dir() and any(p.suffix.lower() in FRAME_EXTENSIONS for p in folder.iterdir())


def _video_path(d: V2Dataset, paths: SuitePaths, video_id: str, file_name: str | None = None) -> str:
    """The frame folder `<frame_root>/<video id>` when it holds frames, else `<video_root>/<file>` (relative to
    data_basedir)."""
    frame_root, video_root = d.media.get("frame_root"), d.media.get("video_root")
    if frame_root and _has_frames(paths.media(f"{frame_root}/{video_id}")):
        return f"{frame_root}/{video_id}"
    return f"{video_root}/{file_name or video_id + '.mp4'}"


def _video_read(d: V2Dataset, paths: SuitePaths, **kw) -> EvalRead:
    num_frames, saved = _frames(d, paths)
    return EvalRead(str(Path(paths.data_basedir)), num_frames=num_frames, max_frames_saved=saved,
                    frame_saving=d.media.get("frame_saving", "spread"), **kw)


# ------------------------------------------------------------------------------------------------ image
def read_image_task(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    read = read_eval_dataset(paths.source(d), d.subset or d.name, d.split, max_rows, parser=d.parser,
                             row_builder={QWEN3: image_row, GME: gme_image_row}.get(paths.composition))
    return EvalRead(str(paths.media(d.media.get("image_root", "image-tasks/"))), rows=read.rows,
                    skipped=dict(read.skipped))


# ------------------------------------------------------------------------------------------------ video
def read_video_classification(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """HMDB51 / UCF101 / K700 / Breakfast: a video query ranked against the dataset's label set
    (`video_classification_datasets.py`: the corpus is the union of every row's label and
    `VIDEOCLS_LABEL_MAPPING[dataset]`, keyed by label, so a row label outside the set is still a candidate; it is
    counted and logged here). Label sets: `eval_data.video_labels`, by default the reference's, shipped in
    `datamodules/assets/mmeb_v2_video_labels.json`."""
    rows = _records(_table(d, paths, d.subset or "default", ("video_id", "pos_text")), _sample_limit(d, max_rows))
    name = d.reference_name or d.name
    labels = list(paths.labels.get(d.name) or paths.labels.get(name) or [])
    row_labels = [_str(r["pos_text"], d, i, "pos_text") for i, r in enumerate(rows)]
    if not labels:
        log.warning("%s: no label set given (eval_data.video_labels has none for it); ranking against the labels "
                    "its rows use. The reference ranks its full label list (VIDEOCLS_LABEL_MAPPING)", d.name)
    extra = [x for x in dict.fromkeys(row_labels) if x not in set(labels)]
    if extra and labels:
        log.warning("%s: %d row label(s) are not in the dataset's label set (e.g. %s); they join the corpus as the "
                    "reference's union of candidates does", d.name, len(extra), extra[:3])
    labels = list(dict.fromkeys(labels)) + extra
    instruction = VIDEO_CLS_INSTRUCTION.get(name, DEFAULT_VIDEO_CLS_INSTRUCTION)
    queries, ids, qrels = [], [], {}
    for i, r in enumerate(rows):
        vid = str(r["video_id"])
        queries.append(Item(compose(instruction, video=True), video=_video_path(d, paths, vid), instruction=instruction))
        ids.append(str(i))
        qrels[str(i)] = {str(r["pos_text"]): 1.0}
    corpus = tuple(Item(label) for label in labels)   # candidates: the bare label text, as the reference
    return _video_read(d, paths, task=CorpusTask(tuple(queries), tuple(ids), corpus, tuple(labels), qrels))


def qa_template(question: str, options: list[str]) -> str:
    """VLM2Vec `vision_utils.qa_template`: the question, then "Options:" and "(A) ..." lines."""
    lines = [f"{question}", "Options:"] + [f"({chr(ord('A') + k)}) {o}" for k, o in enumerate(options)]
    return "\n".join(lines).rstrip()


def read_nextqa(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """NExTQA layout: a video with a multiple-choice question; candidates = the raw option texts."""
    cols = ("video", "question", "answer", "a0", "a1", "a2", "a3", "a4")
    rows = _records(_table(d, paths, d.subset or "default", cols), max_rows)
    out = []
    for i, r in enumerate(rows):
        options = [str(r[f"a{k}"]) for k in range(5)]
        answer = r["answer"]
        if not isinstance(answer, int) or not 0 <= answer < len(options):
            raise DataError(f"answer must be an option index 0..4, got {answer!r}", d.name, i, "answer")
        vid = str(r["video"])
        query = Item(qa_template(compose(VIDEO_QA_PROMPT, str(r["question"]), video=True), options),
                     video=_video_path(d, paths, vid), instruction=VIDEO_QA_PROMPT)
        order = [answer] + [k for k in range(len(options)) if k != answer]
        if paths.composition == QWEN3:   # its nextqa_dataset.py:63,76: the lettered options "(A) ..."
            options = [f"({chr(ord('A') + k)}) {o}" for k, o in enumerate(options)]
        out.append(EvalRow(d.name, i, query, tuple(Item(options[k]) for k in order)))
    return _video_read(d, paths, rows=out)


def read_msrvtt(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """MSR-VTT layout (video_id, video, caption): a caption ranked against the corpus of every video."""
    rows = _records(_table(d, paths, d.subset or "default", ("video_id", "video", "caption")), max_rows)
    queries, qids, qrels, corpus = [], [], {}, {}
    for i, r in enumerate(rows):
        vid = str(r["video_id"])
        queries.append(Item(compose(VIDEO_RET_QUERY, str(r["caption"])), instruction=VIDEO_RET_QUERY))
        qids.append(str(i))
        qrels[str(i)] = {vid: 1.0}
        corpus.setdefault(vid, Item(compose(VIDEO_TARGET, video=True), video=_video_path(d, paths, vid, str(r["video"])),
                                    instruction=VIDEO_TARGET))
    task = CorpusTask(tuple(queries), tuple(qids), tuple(corpus.values()), tuple(corpus), qrels)
    return _video_read(d, paths, task=task)


def read_moment_retrieval(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """QVHighlight / Charades-STA layout: a query video (frames `<frame_root>/<video>/query`) and a text, ranked
    against its clips (`positive_*` is the ground truth, `negative_*` the others)."""
    rows = _records(_table(d, paths, d.subset or "default", ("query", "video_path")), max_rows)
    frame_root = d.media["frame_root"]
    out = []
    for i, r in enumerate(rows):
        video = Path(str(r["video_path"])).stem
        base = paths.media(f"{frame_root}/{video}")
        if not base.is_dir():
            raise DataError(f"frame folder {base} not found; extract the dataset's frames there (the reference's "
                            "video-tasks/frames layout)", d.name, i, "video_path")
        clips = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name != "query")
        positive = [c for c in clips if c.startswith("positive")]
        if len(positive) != 1:
            raise DataError(f"{base} holds {len(positive)} positive_* clip folders; exactly one is needed",
                            d.name, i, "video_path")
        cands = [Item(compose(VIDEO_TARGET, video=True), video=f"{frame_root}/{video}/{c}", instruction=VIDEO_TARGET)
                 for c in positive + [c for c in clips if c not in positive]]
        query = Item(compose(MOMENT_QUERY, str(r["query"]), video=True), video=f"{frame_root}/{video}/query",
                     instruction=MOMENT_QUERY)
        out.append(EvalRow(d.name, i, query, tuple(cands)))
    return _video_read(d, paths, rows=out)


# ------------------------------------------------------------------------------------- video (more parsers)
#: `mvbench_dataset.py` `subset_meta`: the 20 MVBench configs in the reference's load order, each with its video
#: folder under `video_root` and whether its "video" is a folder of frames (`data_type: frame`).
MVBENCH_SUBSETS = {
    "episodic_reasoning": ("tvqa/frames_fps3_hq/", True), "action_sequence": ("star/Charades_v1_480/", False),
    "action_prediction": ("star/Charades_v1_480/", False), "action_antonym": ("ssv2_video/", False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos/", False), "unexpected_action": ("FunQA_test/test/", False),
    "object_existence": ("clevrer/video_validation/", False), "object_interaction": ("star/Charades_v1_480/", False),
    "object_shuffle": ("perception/videos/", False), "moving_direction": ("clevrer/video_validation/", False),
    "action_localization": ("sta/sta_video/", False), "scene_transition": ("scene_qa/video/", False),
    "action_count": ("perception/videos/", False), "moving_count": ("clevrer/video_validation/", False),
    "moving_attribute": ("clevrer/video_validation/", False), "state_change": ("perception/videos/", False),
    "fine_grained_pose": ("nturgbd/", False), "character_order": ("perception/videos/", False),
    "egocentric_navigation": ("vlnqa/", False), "counterfactual_inference": ("clevrer/video_validation/", False),
}
#: `videomme_dataset.py` / `egoschema_dataset.py` OPTIONS, `activitynetqa_dataset.py` OPTIONS.
LETTER_OPTIONS = ("A", "B", "C", "D")
YES_NO = ("yes", "no")
#: TASK_INST_QRY of the text-to-video retrieval parsers (their TASK_INST_TGT is `VIDEO_TARGET`).
T2V_QUERY = {
    "didemo": "Find a video that includes the following described scenes:",
    "msvd": "Find the video snippet that corresponds to the given summary:",
    "vatex": "Select a video that fits the description provided:",
    "youcook2": "Find a video that demonstrates the following action while making a recipe:",
}
#: `momentseeker_dataset.py` TASK_INST_QRY_{TEXT,IMG,VIDEO} / TASK_INST_TGT.
MOMENTSEEKER_QUERY_TEXT = "Find the clip that corresponds to the given text:"
MOMENTSEEKER_QUERY_IMAGE = "Select the video clip that aligns with the given text and image:"
MOMENTSEEKER_QUERY_VIDEO = "Find the clip that corresponds to the given sentence and video segment:"
MOMENTSEEKER_TARGET = "Understand the content of the provided video clip."


def _sample_limit(d: V2Dataset, max_rows: int | None) -> int | None:
    """Rows to read: the reference's `num_sample_per_subset` (the first N rows, `sample_dataset`) and `max_rows`."""
    limits = [int(x) for x in (d.media.get("num_sample_per_subset"), max_rows) if x is not None]
    return min(limits) if limits else None


def _str(value, d: V2Dataset, row: int, name: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise DataError(f"expected a non-empty string, got {type(value).__name__} {value!r:.60}", d.name, row, name)
    return value


def _str_list(value, d: V2Dataset, row: int, name: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise DataError(f"expected a non-empty list, got {type(value).__name__} {value!r:.60}", d.name, row, name)
    return [_str(v, d, row, f"{name}[{k}]") for k, v in enumerate(value)]


def read_ssv2(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """SmthSmthV2 (`ssv2_dataset.py`): a video ranked against the row's own label list `neg_text`; correct = the
    entries equal to `pos_text` (the reference matches candidate names, so a repeated label is correct each
    time). The first 1000 rows (`num_sample_per_subset`)."""
    rows = _records(_table(d, paths, d.subset or "default", ("video_id", "pos_text", "neg_text")),
                    _sample_limit(d, max_rows))
    instruction = VIDEO_CLS_INSTRUCTION[d.reference_name or d.name]
    out = []
    for i, r in enumerate(rows):
        labels, truth = _str_list(r["neg_text"], d, i, "neg_text"), _str(r["pos_text"], d, i, "pos_text")
        relevant = tuple(k for k, label in enumerate(labels) if label == truth)
        if not relevant:
            raise DataError(f"pos_text {truth!r} is not among the row's candidates (neg_text); the row cannot be "
                            "scored", d.name, i, "pos_text")
        query = Item(compose(instruction, video=True), video=_video_path(d, paths, str(r["video_id"])),
                     instruction=instruction)
        out.append(EvalRow(d.name, i, query, tuple(Item(label) for label in labels), relevant))
    return _video_read(d, paths, rows=out)


def _option_text(option: str, d: V2Dataset, row: int, name: str) -> str:
    """`o[o.find('. '):].strip('. ')` (videomme/egoschema): the option without its "A. " letter, trailing
    periods and spaces removed. An option without ". " is refused (the reference would keep its last character)."""
    cut = option.find(". ")
    if cut < 0:
        raise DataError(f"option {option!r} has no '<letter>. ' prefix", d.name, row, name)
    return option[cut:].strip(". ")


def _multiple_choice(d: V2Dataset, i: int, question: str, video: str, options: list[str], answer: int,
                     cand_texts: list[str]) -> EvalRow:
    query = Item(compose(VIDEO_QA_PROMPT, question, video=True), video=video, instruction=VIDEO_QA_PROMPT)
    return EvalRow(d.name, i, query, tuple(Item(t) for t in cand_texts), (answer,))


def read_videomme(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """Video-MME (`videomme_dataset.py`): the question + "\\n" + the lettered options one per line; candidates =
    the options without their letters; correct = the option of the `answer` letter (A-D)."""
    rows = _records(_table(d, paths, d.subset or "default", ("question", "videoID", "options", "answer")),
                    _sample_limit(d, max_rows))
    out = []
    for i, r in enumerate(rows):
        options = _str_list(r["options"], d, i, "options")
        if r["answer"] not in LETTER_OPTIONS[: len(options)]:
            raise DataError(f"answer must be one of {list(LETTER_OPTIONS[:len(options)])}, got {r['answer']!r}",
                            d.name, i, "answer")
        question = _str(r["question"], d, i, "question") + "\n" + "\n".join(options)
        cands = [_option_text(o, d, i, f"options[{k}]") for k, o in enumerate(options)]
        out.append(_multiple_choice(d, i, question, _video_path(d, paths, str(r["videoID"])), options,
                                    LETTER_OPTIONS.index(r["answer"]), cands))
    return _video_read(d, paths, rows=out)


def read_egoschema(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """EgoSchema (`egoschema_dataset.py`): the question immediately followed by the options joined by " " (no
    separator after the question, as the reference); candidates = the options without letters; correct =
    `int(answer)`."""
    rows = _records(_table(d, paths, d.subset or "default", ("video_idx", "question", "answer", "option")),
                    _sample_limit(d, max_rows))
    out = []
    for i, r in enumerate(rows):
        options = _str_list(r["option"], d, i, "option")
        try:
            answer = int(r["answer"])
        except (TypeError, ValueError):
            answer = -1
        if not 0 <= answer < len(options):
            raise DataError(f"answer must be an option index 0..{len(options) - 1}, got {r['answer']!r}",
                            d.name, i, "answer")
        sep = " " if paths.composition == QWEN3 else ""   # its egoschema_dataset.py:31 puts a space there
        question = _str(r["question"], d, i, "question") + sep + " ".join(options)
        cands = [_option_text(o, d, i, f"option[{k}]") for k, o in enumerate(options)]
        out.append(_multiple_choice(d, i, question, _video_path(d, paths, str(r["video_idx"])), options, answer,
                                    cands))
    return _video_read(d, paths, rows=out)


def read_activitynetqa(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """ActivityNetQA (`activitynetqa_dataset.py`): question + "? (A) yes; (B) no."; candidates "yes", "no";
    video `v_<video_name>`."""
    rows = _records(_table(d, paths, d.subset or "default", ("video_name", "question", "answer")),
                    _sample_limit(d, max_rows))
    out = []
    for i, r in enumerate(rows):
        if r["answer"] not in YES_NO:
            raise DataError(f"answer must be 'yes' or 'no', got {r['answer']!r}", d.name, i, "answer")
        question = _str(r["question"], d, i, "question") + "? (A) yes; (B) no."
        video = _video_path(d, paths, f"v_{_str(r['video_name'], d, i, 'video_name')}")
        out.append(_multiple_choice(d, i, question, video, list(YES_NO), YES_NO.index(r["answer"]), list(YES_NO)))
    return _video_read(d, paths, rows=out)


def read_mvbench(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """MVBench (`mvbench_dataset.py`): the 20 configs concatenated in the reference's order; the question with
    `qa_template` options "(A) c"; candidates = those "(A) c" strings; correct = the candidate equal to `answer`
    (the last one, as the reference's loop). Frames `<frame_root>/<config>/<video>`, else the video (or, for
    `episodic_reasoning`, the frame folder) `<video_root>/<config's folder>/<video>`."""
    limit = _sample_limit(d, max_rows)
    frame_root, video_root = d.media.get("frame_root"), d.media.get("video_root")
    out: list[EvalRow] = []
    for subset, (folder, _is_frames) in MVBENCH_SUBSETS.items():
        if limit is not None and len(out) >= limit:
            break
        ds = _table(d, paths, subset, ("video", "question", "candidates", "answer"))
        for r in _records(ds, None if limit is None else limit - len(out)):
            i = len(out)
            cands = r["candidates"]
            if not isinstance(cands, (list, tuple)) or not cands:
                raise DataError(f"expected a non-empty list of candidates, got {cands!r:.60}", d.name, i, "candidates")
            matches = [k for k, c in enumerate(cands) if c == r["answer"]]
            if not matches:
                raise DataError(f"answer {r['answer']!r} is not among the candidates {list(cands)!r:.120}", d.name, i,
                                "answer")
            video = _str(r["video"], d, i, "video")
            options = [f"({chr(ord('A') + k)}) {c}" for k, c in enumerate(cands)]
            question = qa_template(compose(VIDEO_QA_PROMPT, _str(r["question"], d, i, "question"), video=True),
                                   [str(c) for c in cands])
            frames = f"{frame_root}/{subset}/{video}"
            path = frames if _has_frames(paths.media(frames)) else f"{video_root}/{folder}{video}"
            query = Item(question, video=path, instruction=VIDEO_QA_PROMPT)
            out.append(EvalRow(d.name, i, query, tuple(Item(o) for o in options), (matches[-1],)))
    return _video_read(d, paths, rows=out)


def _read_text_to_video(d: V2Dataset, paths: SuitePaths, max_rows: int | None, columns: tuple[str, ...],
                        fields) -> EvalRead:
    """A caption ranked against the corpus of every video of the dataset (the reference's global ranking keys
    candidates by video name, so a video named by several rows is one corpus item). `fields(row, i)` gives
    (video name, video file under video_root, caption)."""
    rows = _records(_table(d, paths, d.subset or "default", columns), _sample_limit(d, max_rows))
    instruction = T2V_QUERY[d.parser]
    queries, qids, qrels, corpus = [], [], {}, {}
    for i, r in enumerate(rows):
        name, file_name, caption = fields(r, i)
        queries.append(Item(compose(instruction, caption), instruction=instruction))
        qids.append(str(i))
        qrels[str(i)] = {name: 1.0}
        corpus.setdefault(name, Item(compose(VIDEO_TARGET, video=True), video=_video_path(d, paths, name, file_name),
                                     instruction=VIDEO_TARGET))
    task = CorpusTask(tuple(queries), tuple(qids), tuple(corpus.values()), tuple(corpus), qrels)
    return _video_read(d, paths, task=task)


def read_didemo(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """DiDeMo (`didemo_dataset.py`): columns video (a path), caption; video name = the file's stem."""
    def fields(r, i):
        base = os.path.basename(_str(r["video"], d, i, "video"))
        return os.path.splitext(base)[0], base, _str(r["caption"], d, i, "caption")
    return _read_text_to_video(d, paths, max_rows, ("video", "caption"), fields)


def read_msvd(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """MSVD (`msvd_dataset.py`): columns video_id, video, caption (a list: the first caption is the query)."""
    def fields(r, i):
        return (_str(r["video_id"], d, i, "video_id"), _str(r["video"], d, i, "video"),
                _str_list(r["caption"], d, i, "caption")[0])
    return _read_text_to_video(d, paths, max_rows, ("video_id", "video", "caption"), fields)


def read_vatex(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """VATEX (`vatex_dataset.py`): columns videoID, enCap (a list: the first English caption is the query)."""
    def fields(r, i):
        name = _str(r["videoID"], d, i, "videoID")
        return name, name + ".mp4", _str_list(r["enCap"], d, i, "enCap")[0]
    return _read_text_to_video(d, paths, max_rows, ("videoID", "enCap"), fields)


def read_youcook2(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """YouCook2 (`youcook2_dataset.py`, lmms-lab/YouCook2 val): columns id (the segment: one video each),
    video_path (its file name is looked up under video_root), sentence."""
    def fields(r, i):
        return (str(r["id"]), os.path.basename(_str(r["video_path"], d, i, "video_path")),
                _str(r["sentence"], d, i, "sentence"))
    return _read_text_to_video(d, paths, max_rows, ("id", "video_path", "sentence"), fields)


def momentseeker_clip_dir(path: str) -> str:
    """`momentseeker_dataset.py`: a clip's frame folder name, `path.replace("/", "_").split(".mp4")[0]`."""
    return path.replace("/", "_").split(".mp4")[0]


def read_momentseeker(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """MomentSeeker (`momentseeker_dataset.py`): the query is a text, a text with an image
    (`input_frames` *.jpg: `<frame_root>/query_<input_frames>`) or a text with a video (*.mp4: frames in
    `<frame_root>/video_frames/<name>`); candidates = the positive clips then the negative ones (frames in
    `<frame_root>/video_frames/<clip name>`); every positive clip is correct (`label_name` is their list). The
    reference feeds every frame of these folders (`load_frames`; it saves at most `num_video_frames` = 8 per clip);
    here `num_frames` (8) are sampled from them, the same frames for folders of at most 8."""
    rows = _records(_table(d, paths, d.subset or "default",
                           ("query", "positive_frames", "negative_frames", "input_frames")),
                    _sample_limit(d, max_rows))
    frame_root = d.media["frame_root"]
    target = Item(compose(MOMENTSEEKER_TARGET, video=True), instruction=MOMENTSEEKER_TARGET)

    def clips(value, i: int, name: str) -> list[str]:
        if not isinstance(value, (list, tuple)):
            raise DataError(f"expected a list of clips, got {type(value).__name__}", d.name, i, name)
        out = []
        for k, entry in enumerate(value):
            path = entry.get("output_path") if isinstance(entry, Mapping) else None
            out.append(_str(path, d, i, f"{name}[{k}].output_path"))
        return out

    out = []
    for i, r in enumerate(rows):
        text = _str(r["query"], d, i, "query")
        source = r["input_frames"] or ""
        if not isinstance(source, str):
            raise DataError(f"expected a file name or nothing, got {source!r:.60}", d.name, i, "input_frames")
        if source.endswith(".mp4"):
            name = source.split(".mp4")[0].replace("/", "_")
            query = Item(compose(MOMENTSEEKER_QUERY_VIDEO, text, video=True), instruction=MOMENTSEEKER_QUERY_VIDEO,
                         video=f"{frame_root}/video_frames/{name}")
        elif source.endswith(".jpg"):
            query = Item(compose(MOMENTSEEKER_QUERY_IMAGE, text, image=True), instruction=MOMENTSEEKER_QUERY_IMAGE,
                         image=f"{frame_root}/query_{source}")
        else:
            query = Item(compose(MOMENTSEEKER_QUERY_TEXT, text), instruction=MOMENTSEEKER_QUERY_TEXT)
        positive = clips(r["positive_frames"], i, "positive_frames")
        if not positive:
            raise DataError("no positive clip; the row cannot be scored", d.name, i, "positive_frames")
        names = [f"{frame_root}/video_frames/{momentseeker_clip_dir(p)}"
                 for p in positive + clips(r["negative_frames"], i, "negative_frames")]
        cands = tuple(Item(target.text, video=n, instruction=target.instruction) for n in names)
        out.append(EvalRow(d.name, i, query, cands, tuple(range(len(positive)))))
    return _video_read(d, paths, rows=out)


# ------------------------------------------------------------------------------------------------ visdoc
def visrag_image_name(corpus_id: str) -> str:
    """VisRAG corpus ids can be very long file names: the reference's shortened name (`visrag_dataset.py`)."""
    base, ext = os.path.splitext(corpus_id)
    return base[:50] + "_" + hashlib.md5(corpus_id.encode("utf-8")).hexdigest()[:8] + ext


def read_beir(d: V2Dataset, paths: SuitePaths, max_rows: int | None) -> EvalRead:
    """ViDoRe / VisRAG BEIR layout: configs `queries` (query-id, query[, language]), `corpus` (corpus-id, image),
    `qrels` (query-id, corpus-id, score). Grades <= 0 are not relevant (`load_qrels_mapping`); a query without a
    relevant document is skipped and counted (the reference would fail on it)."""
    image_root = paths.media(d.media["image_root"])
    queries_ds = _table(d, paths, "queries", ("query-id", "query"))
    if d.language is not None:
        if "language" not in queries_ds.column_names:
            raise DataError(f"language filter {d.language!r} needs a `language` column in queries", dataset=d.name)
        queries_ds = queries_ds.filter(lambda ex: ex["language"] == d.language)
    qrels_rows = _records(_table(d, paths, "qrels", ("query-id", "corpus-id", "score")), None)
    qrels: dict[str, dict[str, float]] = {}
    for r in qrels_rows:
        if float(r["score"]) > 0:
            qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = float(r["score"])
    corpus_ds = _table(d, paths, "corpus", ("corpus-id", "image"))
    name_of = visrag_image_name if d.parser == "visrag" else (lambda cid: f"{cid}.png")
    ids = [str(c) for c in corpus_ds["corpus-id"]]
    missing = [k for k, cid in enumerate(ids) if not (image_root / name_of(cid)).is_file()]
    if missing:
        image_root.mkdir(parents=True, exist_ok=True)
        for k in missing:  # decoded once, then read as files like every other image
            image = corpus_ds[k]["image"]
            if image is None:
                raise DataError("corpus row has no image", d.name, k, "image")
            tmp = image_root / f".{name_of(ids[k])}.tmp"
            image.convert("RGB").save(tmp, format="PNG")
            os.replace(tmp, image_root / name_of(ids[k]))
        log.info("%s: wrote %d corpus page image(s) to %s", d.name, len(missing), image_root)
    corpus = tuple(Item(compose(VISDOC_TARGET, image=True), image=name_of(cid), instruction=VISDOC_TARGET)
                   for cid in ids)
    queries, qids, skipped = [], [], Counter()
    for r in _records(queries_ds, None):
        qid = str(r["query-id"])
        if not qrels.get(qid):
            skipped[NO_RELEVANT] += 1
            continue
        queries.append(Item(compose(VISDOC_QUERY, str(r["query"])), instruction=VISDOC_QUERY))
        qids.append(qid)
    queries, qids = _limit(queries, max_rows), _limit(qids, max_rows)
    if skipped:
        log.warning("%s: skipped %d queries without a relevant document in the qrels", d.name, skipped[NO_RELEVANT])
    if not queries:
        raise DataError("no query has a relevant document in the qrels", dataset=d.name)
    task = CorpusTask(tuple(queries), tuple(qids), corpus, tuple(ids), {q: qrels[q] for q in qids})
    return EvalRead(str(image_root), task=task, skipped=dict(skipped))


READERS = {
    "image_cls": read_image_task, "image_qa": read_image_task, "image_i2t": read_image_task,
    "image_t2i": read_image_task, "image_i2i_vg": read_image_task,
    "video_classification": read_video_classification, "nextqa": read_nextqa, "msrvtt": read_msrvtt,
    "moment_retrieval": read_moment_retrieval, "vidore": read_beir, "visrag": read_beir,
    "ssv2": read_ssv2, "videomme": read_videomme, "mvbench": read_mvbench, "egoschema": read_egoschema,
    "activitynetqa": read_activitynetqa, "didemo": read_didemo, "msvd": read_msvd, "vatex": read_vatex,
    "youcook2": read_youcook2, "momentseeker": read_momentseeker,
}


def read_v2_dataset(d: V2Dataset, paths: SuitePaths, max_rows: int | None = None) -> EvalRead:
    reader = READERS.get(d.parser)
    if reader is None:
        raise DataError(f"no reader for the reference's {d.parser!r} layout yet (implemented: "
                        f"{', '.join(sorted(READERS))}); leave this dataset out of eval_data.datasets",
                        dataset=d.name, field="parser")
    read = reader(d, paths, max_rows)
    if paths.composition == QWEN3 and d.modality != "image":   # image rows are built in its form already
        read.rows, read.task = recompose(d.parser, d.reference_name or d.name, read.rows, read.task)
        if d.parser == "moment_retrieval" and paths.num_frames in (None, QWEN3_NUM_FRAMES):   # video.yaml: clips 8
            read.candidate_num_frames = QWEN3_NUM_CLIP_FRAMES
    elif paths.composition == GME and d.modality != "image":   # image rows are built in its form already
        read.rows, read.task = gme_recompose(d.parser, read.rows, read.task)
    return read


def v2_dataset_from_config(name: str, cfg: Mapping) -> V2Dataset:
    """A `conf/eval_data/mmeb_v2*.yaml` entry as a V2Dataset (the `metric` key is derived, not stored)."""
    known = set(V2Dataset.__dataclass_fields__) - {"name"}
    body = {k: v for k, v in dict(cfg).items() if k != "metric"}
    unknown = set(body) - known
    if unknown:
        raise DataError(f"unknown key(s) {sorted(unknown)} in the eval_data entry; known: {sorted(known)}",
                        dataset=name)
    d = V2Dataset(name, **{**body, "media": dict(body.get("media") or {})})
    if cfg.get("metric") not in (None, d.metric):
        raise DataError(f"metric {cfg['metric']!r} differs from the modality's headline metric {d.metric!r}",
                        dataset=name, field="metric")
    return d


#: The reference's video-classification label sets (`VIDEOCLS_LABEL_MAPPING`), as data.
VIDEO_LABELS_ASSET = Path(__file__).resolve().parent / "assets" / "mmeb_v2_video_labels.json"


def load_labels(path: str | None) -> dict[str, list[str]]:
    """Video label sets from a JSON file: {dataset: [labels]} or a file with a `labels` key (the shipped asset,
    a bundled manifest); no path = the reference's label sets (`VIDEO_LABELS_ASSET`)."""
    path = Path(path) if path else VIDEO_LABELS_ASSET
    if not path.is_file():
        raise DataError(f"video label file {path} not found; set eval_data.video_labels to a JSON file "
                        "{dataset: [labels]} or to null for the reference's label sets", field="video_labels")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"video label file {path} is not valid JSON ({err})", field="video_labels") from None
    labels = data.get("labels", data) if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                                               for v in labels.values()):
        raise DataError(f"video label file {path} must map dataset names to lists of label strings",
                        field="video_labels")
    return dict(labels)
