"""MMEB-V2 items as Qwen3-VL-Embedding's own evaluator builds them (`eval_data` composition `qwen3vl_embedding`,
chosen by `prompt=qwen3vl_embedding`), next to the VLM2Vec composition the readers build by default.

Reference: github.com/QwenLM/Qwen3-VL-Embedding at 8ce3aab (January 2026), `src/evaluation/mmeb_v2/`: the
per-parser `data/datasets/*.py` (instructions and inputs), `scripts/evaluation/mmeb_v2/*.yaml` (frame counts) and
`src/models/qwen3_vl_embedding.py` (`format_model_input`). Where it differs from VLM2Vec's evaluator (which the
readers in `mmeb_v2_readers.py` follow, as `conf/eval_data/mmeb_v2*.yaml` do):

- instruction wording: every query instruction ends with "." where VLM2Vec's ends with ":" (e.g. msrvtt_dataset.py:14
  "Find a video that contains the following visual content."); the video-QA parsers drop VLM2Vec's trailing
  " Question: " (nextqa_dataset.py:16); unknown video-classification names get "Classify the video into the correct
  category." (video_classification_datasets.py:24), unknown SSv2 names "Understand the action in the video."
  (ssv2_dataset.py:19);
- candidates carry no instruction (every TASK_INST_TGT is commented out, e.g. msrvtt_dataset.py:15,45): they get the
  default system message "Represent the user's input." (models.py:48) and their visual / text only;
- image tasks: the instruction column is the instruction (`qry_inst` without `<|image_1|>`, stripped,
  image_cls_dataset.py:21) and `qry_text` the text, instead of VLM2Vec's one composed string; text-to-image
  candidates are the image plus the stripped caption when there is one (image_t2i_eval.py:34-41), grounding
  candidates image (+ caption) (image_i2i_vg_dataset.py:35-45), the others the target text;
- NExTQA candidates are the lettered options "(A) ..." (nextqa_dataset.py:63,76; VLM2Vec: the raw option texts);
  EgoSchema joins question and options with " " (egoschema_dataset.py:31; VLM2Vec: nothing);
- every video dataset feeds 64 frames (video.yaml `num_frames: 64`; VLM2Vec 8); moment-retrieval candidate clips
  keep 8 (`num_clip_frames: 8`).

Items keep the readers' form: `text` = `[<placeholder> ]instruction[ rest]` with the instruction apart
(`Item.instruction`); a candidate's instruction is "" (no instruction: the prompt's default system message) so the
prompt formats it in the same Qwen3-VL-Embedding layout (visual, then the text) as the queries.
"""

from __future__ import annotations

import dataclasses

from .errors import DataError
from .schema import PLACEHOLDER, VIDEO_PLACEHOLDER, CorpusTask, EvalRow, Item

COMPOSITIONS = ("vlm2vec", "qwen3vl_embedding", "gme")   # gme: mmeb_v2_gme.py
QWEN3 = "qwen3vl_embedding"

#: video.yaml: `num_frames: 64` / `num_video_frames: 64` for every video dataset, `num_clip_frames: 8` for the
#: moment-retrieval candidate clips.
NUM_FRAMES = 64
NUM_CLIP_FRAMES = 8

#: video_classification_utils.py:16-22 (`DATASET_INSTRUCTION`; ":" endings would become ".", none has one).
VIDEO_CLS = {
    "Kinetics-700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",
}
VIDEO_CLS_DEFAULT = "Classify the video into the correct category."   # video_classification_datasets.py:24
SSV2_DEFAULT = "Understand the action in the video."                  # ssv2_dataset.py:19
#: TASK_INST / TASK_PROMPT of videomme (:10), mvbench (:35), nextqa (:16), egoschema (:10), activitynetqa (:10).
VIDEO_QA = ("Given a video and a question, select the most accurate answer from the provided candidates. "
            "Return only the exact text of your chosen answer.")
#: TASK_INST_QRY of the text-to-video parsers.
T2V = {
    "msrvtt": "Find a video that contains the following visual content.",                  # msrvtt_dataset.py:14
    "didemo": "Find a video that includes the following described scenes.",              # didemo_dataset.py:9
    "msvd": "Find the video snippet that corresponds to the given summary.",              # msvd_dataset.py:9
    "vatex": "Select a video that fits the description provided.",                        # vatex_dataset.py:9
    "youcook2": "Find a video that demonstrates the following action while making a recipe.",  # youcook2_dataset.py:9
}
MOMENT = "Find the clip that corresponds to the described scene in the given video."  # moment_retrieval_datasets.py:10
#: momentseeker_dataset.py:10-12, by the query's visual input.
MOMENTSEEKER = {"text": "Find the clip that corresponds to the given text.",
                "image": "Select the video clip that aligns with the given text and image.",
                "video": "Find the clip that corresponds to the given sentence and video segment."}
VISDOC = "Find a document image that matches the given query."  # vidore_dataset.py:14, visrag_dataset.py:9
VIDEO_QA_PARSERS = ("videomme", "mvbench", "nextqa", "egoschema", "activitynetqa")
IMAGE_PARSERS = ("image_cls", "image_qa", "image_i2t", "image_t2i", "image_i2i_vg")


def check_composition(name: str) -> str:
    if name not in COMPOSITIONS:
        raise DataError(f"eval_data.composition must be one of {list(COMPOSITIONS)}, got {name!r}",
                        field="composition")
    return name


def compose(instruction: str, text: str | None = None, video: bool = False, image: bool = False) -> str:
    """The readers' item text (VLM2Vec `process_input_text`): [placeholder " "] instruction [" " text]."""
    prompt = instruction + (" " + text if text else "")
    if video:
        prompt = f"{VIDEO_PLACEHOLDER} {prompt}"
    if image:
        prompt = f"{PLACEHOLDER} {prompt}"
    return prompt


def rest_of(item: Item) -> str:
    """The text after an item's instruction (the inverse of `compose` for items that carry their instruction)."""
    rest = item.text
    for mark in (VIDEO_PLACEHOLDER, PLACEHOLDER):
        if rest.startswith(mark + " "):
            rest = rest[len(mark) + 1:]
    if item.instruction is None or not rest.startswith(item.instruction):
        raise ValueError(f"item text does not hold its instruction {item.instruction!r}: {item.text[:80]!r}")
    return rest[len(item.instruction):].removeprefix(" ")


def reinstructed(item: Item, instruction: str) -> Item:
    """The item with `instruction` in place of its own (the rest of its text and its visual unchanged)."""
    text = compose(instruction, rest_of(item), video=bool(item.video), image=bool(item.image))
    return dataclasses.replace(item, text=text, instruction=instruction)


def query_instruction(parser: str, dataset: str, item: Item) -> str:
    """The query instruction of the reference parser (`dataset`: the reference's dataset name)."""
    if parser == "video_classification":
        return VIDEO_CLS.get(dataset, VIDEO_CLS_DEFAULT)
    if parser == "ssv2":
        return VIDEO_CLS.get(dataset, SSV2_DEFAULT)
    if parser in VIDEO_QA_PARSERS:
        return VIDEO_QA
    if parser in T2V:
        return T2V[parser]
    if parser == "moment_retrieval":
        return MOMENT
    if parser == "momentseeker":
        return MOMENTSEEKER["video" if item.video else "image" if item.image else "text"]
    if parser in ("vidore", "visrag"):
        return VISDOC
    raise DataError(f"no Qwen3-VL-Embedding composition for parser {parser!r}", dataset=dataset, field="parser")


def candidate(item: Item) -> Item:
    """A candidate as the reference encodes it: no instruction (the default system message), its visual and the
    text after VLM2Vec's target instruction (none for the video and document targets)."""
    if item.instruction is None:
        return item   # label / option texts: the text alone, as the reference
    return reinstructed(item, "")


def recompose(parser: str, dataset: str, rows: list[EvalRow], task: CorpusTask | None
              ) -> tuple[list[EvalRow], CorpusTask | None]:
    """A video / visual-document dataset read in VLM2Vec's composition, as Qwen3-VL-Embedding's evaluator builds
    it: queries with its instruction, candidates without one."""
    def query(it: Item) -> Item:
        if it.instruction is None:
            raise DataError("a query without its instruction apart cannot be recomposed", dataset=dataset)
        return reinstructed(it, query_instruction(parser, dataset, it))

    rows = [dataclasses.replace(r, query=query(r.query), candidates=tuple(candidate(c) for c in r.candidates))
            for r in rows]
    if task is not None:
        task = dataclasses.replace(task, queries=tuple(query(q) for q in task.queries),
                                   corpus=tuple(candidate(c) for c in task.corpus))
    return rows, task


def _path(value, dataset: str, index: int, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"expected an image path, got {value!r:.60}", dataset, index, name)
    return value


def image_row(raw: dict, dataset: str, parser: str, index: int) -> EvalRow:
    """One row of the V2 image-task copy (`ziyjiang/MMEB_Test_Instruct`: qry_inst, qry_text, qry_img_path,
    tgt_inst, tgt_text[], tgt_img_path[]) as Qwen3-VL-Embedding's image parsers build it. The ground truth is
    candidate 0 (`label_name = cand_names[0]`, image_cls_dataset.py:34)."""
    if parser not in IMAGE_PARSERS:
        raise DataError(f"no Qwen3-VL-Embedding image composition for parser {parser!r}", dataset, index, "parser")
    # image_cls_dataset.py:21 (and every image parser): the placeholder removed, stripped; tgt_inst is unused.
    instruction = (raw.get("qry_inst") or "").replace(PLACEHOLDER, "").strip()
    text = raw.get("qry_text") or ""
    texts, paths = raw.get("tgt_text"), raw.get("tgt_img_path")
    for name, value in (("tgt_text", texts), ("tgt_img_path", paths)):
        if not isinstance(value, (list, tuple)) or not value:
            raise DataError(f"expected a non-empty list of candidates, got {value!r:.60}", dataset, index, name)
    if parser == "image_t2i":   # image_t2i_eval.py:23-26: the text alone (the query image is not used)
        query = Item(compose(instruction, text), instruction=instruction)
    else:                       # image_cls_dataset.py:24-28: text + image
        image = _path(raw.get("qry_img_path"), dataset, index, "qry_img_path")
        query = Item(compose(instruction, text, image=True), image=image, instruction=instruction)
    if parser in ("image_cls", "image_qa", "image_i2t"):   # image_cls_dataset.py:30: {"text": t}
        cands = [Item(compose("", t or ""), instruction="") for t in texts]
    elif parser == "image_t2i":   # image_t2i_eval.py:34-41: the image, + the stripped caption when there is one
        cands = [Item(compose("", (texts[k] or "").strip() if k < len(texts) else "", image=True),
                      image=_path(p, dataset, index, f"tgt_img_path[{k}]"), instruction="")
                 for k, p in enumerate(paths)]
    else:   # image_i2i_vg_dataset.py:35-45: text (unstripped) + image when the first caption is not blank
        with_text = bool((texts[0] or "").strip())
        if len(paths) != len(texts):
            raise DataError(f"tgt_text has {len(texts)} entries and tgt_img_path {len(paths)}", dataset, index,
                            "tgt_text/tgt_img_path")
        cands = [Item(compose("", (t or "") if with_text else "", image=True),
                      image=_path(p, dataset, index, f"tgt_img_path[{k}]"), instruction="")
                 for k, (t, p) in enumerate(zip(texts, paths))]
    return EvalRow(dataset, index, query, tuple(cands))
