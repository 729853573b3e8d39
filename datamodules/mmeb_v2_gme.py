"""MMEB-V2 items as VLM2Vec's evaluator builds them for GME (`eval_data` composition `gme`, chosen by `prompt=gme`).

Reference: github.com/TIGER-AI-Lab/VLM2Vec at 6e1e1d4, the same parsers as the default `vlm2vec` composition
(src/data/eval_dataset/*.py) with `model_backbone = "gme"`:

- `process_input_text` puts no visual token in the text: `instruction + " " + text`, or `instruction + " "` without
  text (src/model/processor.py:655-659), so a video / document candidate reads "Understand the content of the
  provided video. " (trailing space) with no token in front;
- the image parsers' string edits stay (" \\n" -> "\\n", the appended "\\n"; `compose_instruction_row` with
  `visual_token=False`); the text-to-image parser still turns a `<|image_1|>` of the query instruction into
  `<|image_pad|>` (image_t2i_eval.py:18), and the model wrapper then removes every "<|image_pad|>\\n"
  (src/model/model.py:77);
- the video-QA parsers do not call `process_input_text`: their `process_query` writes the backbone's video token
  `<|video_pad|>` + " " in front (nextqa_dataset.py:10-15,33; videomme, mvbench, egoschema, activitynetqa alike),
  which the reference's model then sees as one ordinary token after the image. Not reproduced: transformers 5's
  Qwen2-VL processor refuses a video token without a video, so the GME text drops that token and its space;
- label and option candidates are the bare texts, as in the `vlm2vec` composition.

Frames and images are read as in the `vlm2vec` composition (8 frames per video); the prompt (`conf/prompt/gme.yaml`,
`video_as_image: middle`) then gives the model the middle one of the sampled frames as one image
(src/model/model.py:79-84) and the chat layout of src/model/baseline_backbone/gme/gme_inference.py:115-132.
"""

from __future__ import annotations

import dataclasses

from .mmeb import compose_instruction_row
from .mmeb_v2_qwen3 import VIDEO_QA_PARSERS, rest_of
from .schema import PLACEHOLDER, VIDEO_PLACEHOLDER, CorpusTask, EvalRow, Item, parse_eval_row

GME = "gme"
#: VLM2Vec `VLM_IMAGE_TOKENS[GME]` (src/model/processor.py:66).
IMAGE_TOKEN = "<|image_pad|>"


def strip_image_lines(text: str) -> str:
    """src/model/model.py:77: the GME wrapper removes "<|image_pad|>\\n" from every text."""
    return text.replace(IMAGE_TOKEN + "\n", "")


def image_row(raw: dict, dataset: str, parser: str, index: int) -> EvalRow:
    """One row of the V2 image-task copy as VLM2Vec's image parsers build it for GME: their composition without
    the image token (the image is prepended by the chat layout), the t2i query's `<|image_1|>` as `<|image_pad|>`
    (image_t2i_eval.py:18) and then model.py:77's removal."""
    row = compose_instruction_row(raw, dataset, parser, visual_token=False)
    row["qry_text"] = strip_image_lines(row["qry_text"].replace(PLACEHOLDER, IMAGE_TOKEN))
    row["tgt_text"] = [strip_image_lines(t) for t in row["tgt_text"]]
    return parse_eval_row(row, dataset, index)


def gme_item(parser: str, item: Item) -> Item:
    """A video / visual-document item of the `vlm2vec` composition as the GME text."""
    if parser in VIDEO_QA_PARSERS and item.text.startswith(VIDEO_PLACEHOLDER + " "):
        # process_query(query, prompt, video_token="<|video_pad|>"): f"{video_token} {prompt} {query}"; the token
        # and its space are dropped (a processor of transformers 5 refuses a video token without a video)
        return dataclasses.replace(item, text=item.text[len(VIDEO_PLACEHOLDER) + 1:])
    if item.instruction is None:
        return item   # label / option texts: the text alone
    # process_input_text for GME: instruction + " " + text (instruction + " " without text), no visual token
    return dataclasses.replace(item, text=strip_image_lines(item.instruction + " " + rest_of(item)))


def recompose(parser: str, rows: list[EvalRow], task: CorpusTask | None
              ) -> tuple[list[EvalRow], CorpusTask | None]:
    """A video / visual-document dataset read in VLM2Vec's composition, with GME's texts."""
    rows = [dataclasses.replace(r, query=gme_item(parser, r.query),
                                candidates=tuple(gme_item(parser, c) for c in r.candidates)) for r in rows]
    if task is not None:
        task = dataclasses.replace(task, queries=tuple(gme_item(parser, q) for q in task.queries),
                                   corpus=tuple(gme_item(parser, c) for c in task.corpus))
    return rows, task
