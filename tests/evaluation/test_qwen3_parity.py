"""`prompt=qwen3vl_embedding` builds MMEB-V2 inputs as Qwen3-VL-Embedding's own evaluation code does, for every
task family: the formatted text (string for string), the token ids and the image / video inputs (frame count,
pixel budget -> grid), for a query and a candidate of each.

Reference: github.com/QwenLM/Qwen3-VL-Embedding at 8ce3aab, cited as `Q3:<file>:<line>` (paths under
src/evaluation/mmeb_v2/ unless they start with src/models or scripts), and qwen-vl-utils in
github.com/QwenLM/Qwen3-VL at 9658872 (`VLU:vision_process.py:<line>`). Every expected value below is written from
reading that code, not computed by embedlab: the instruction strings, the user-turn content (format_model_input,
Q3:src/models/qwen3_vl_embedding.py:230-326: system = instruction stripped + "." unless punctuation, default
"Represent the user's input."; user = videos, images, then the text), the Qwen3-VL chat template's rendering of
that conversation (`<|im_start|>role\\n...<|im_end|>\\n`, an image as `<|vision_start|><|image_pad|><|vision_end|>`,
a video as `<|vision_start|><|video_pad|><|vision_end|>`, add_generation_prompt=True), and the image / frame sizes
by qwen-vl-utils' rules worked by hand in the comments. The processor that expands the visual tokens is the
same class on both sides (transformers' Qwen3VLProcessor: `<t seconds>` + one `<|video_pad|>` per merged patch
for each frame pair, timestamps from the frame-list metadata VLU:vision_process.py:430-446).

Token ids: the tiny Qwen3-VL's word-level tokenizer (the real one is not reachable offline; it carries the same
special tokens, so special-token positions and visual-token counts are exact, word pieces are not), applied to
the expected string with the visual tokens expanded by hand. Image and video settings: the shipped
conf/model/qwen3vl_embedding_2b.yaml (and qwen3vl_2b.yaml for images) on the tiny backbone.

Not covered: pixel values (the reference writes video frames to JPEG with ffmpeg and resizes with torchvision's
bicubic+antialias; embedlab decodes the video and resizes with PIL: same sizes and grids, pixel values within
resampling differences), image QA and grounding are not among the bundled sets: their rows are hand-made in the
V2 image-task columns (qry_inst, qry_text, qry_img_path, tgt_inst, tgt_text, tgt_img_path) on a bundled image.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from datamodules.media import MediaLoader, load_visual
from datamodules.mmeb_v2_qwen3 import image_row
from embedders import Embedder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

from v2_parity import bundled_v2_suite, encode_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = "Represent the user's input."   # Q3:src/models/qwen3_vl_embedding.py:170, models.py:48
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"


def chat(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def image_tokens(tokens: int) -> str:
    return "<|vision_start|>" + "<|image_pad|>" * tokens + "<|vision_end|>"


def video_tokens(pairs: int, tokens_per_pair: int) -> str:
    """The chat template's `<|vision_start|><|video_pad|><|vision_end|>` as Qwen3VLProcessor expands it in the
    reference's pinned transformers 4.57.3 (Q3:uv.lock:2579-2580; processing_qwen3_vl.py:210-227 there): the
    whole wrapper replaced by, per frame pair, `<t seconds>` + `<|vision_start|>` + the pair's tokens +
    `<|vision_end|>`; frame-list metadata (fps 2.0, indices 0..n-1) gives pair k the timestamp
    (2k + 2k + 1) / 2 / 2 seconds (_calculate_timestamps, :314-325), written with one decimal."""
    return "".join(f"<{(4 * k + 1) / 4:.1f} seconds><|vision_start|>" + "<|video_pad|>" * tokens_per_pair
                   + "<|vision_end|>" for k in range(pairs))


@pytest.fixture(scope="module")
def suite(bundled_v2_root):
    return bundled_v2_suite(bundled_v2_root, "qwen3vl_embedding")


@pytest.fixture(scope="module")
def embedder():
    video = OmegaConf.load(ROOT / "conf/model/qwen3vl_embedding_2b.yaml").image.video
    image = OmegaConf.load(ROOT / "conf/model/qwen3vl_2b.yaml").image
    # Q3:src/models/qwen3_vl_embedding.py:25-32: IMAGE_FACTOR 32, MIN_PIXELS 4*32*32, MAX_PIXELS 1800*32*32,
    # FRAME_MAX_PIXELS 768*32*32, MAX_TOTAL_PIXELS 10 * FRAME_MAX_PIXELS, MAX_FRAMES 64; VLU:vision_process.py:28-31
    # VIDEO_MIN_TOKEN_NUM 128, VIDEO_MAX_TOKEN_NUM 768, frame-list sample_fps 2.0.
    assert (image.min_pixels, image.max_pixels) == (4 * 32 * 32, 1800 * 32 * 32)
    assert (video.sizing, video.min_pixels, video.max_pixels, video.total_pixels, video.frames_fps) == \
        ("qwen_vl_utils", 128 * 32 * 32, 768 * 32 * 32, 10 * 768 * 32 * 32, 2.0)
    images = {"min_pixels": image.min_pixels, "max_pixels": image.max_pixels,
              "video": OmegaConf.to_container(video)}
    return Embedder.build("qwen3_vl", config={}, prompt="qwen3vl_embedding", image=images, max_length=8192)


def check(embedder, got_batch, want_expanded: str):
    tok = embedder.processor.tokenizer
    assert got_batch["input_ids"][0].tolist() == tok(want_expanded, add_special_tokens=False)["input_ids"]


def test_image_classification(suite, embedder):
    ds = suite["ShapeCls"]
    row = ds.rows[0]
    # Q3:image_cls_dataset.py:21,24-28: instruction = qry_inst without <|image_1|>, stripped
    # ("<|image_1|>\nRepresent the given image for classification", bundled_v2.py) -> "." added (qwen3_vl_embedding.py:233);
    # text = qry_text ("") after the image.
    text, image, batch = encode_inputs(embedder, ds, row.query, "query")
    assert text == chat("Represent the given image for classification.", IMG)
    # 84x84 bundled image: VLU smart_resize(84, 84, factor 32, 4096, 1843200) (vision_process.py:56-81, the
    # pixels of Q3:src/models/qwen3_vl_embedding.py:316-319): round(84 / 32) * 32 = 96 -> 96x96 = 9216 within the
    # budget -> grid (1, 96 / 16, 96 / 16) = (1, 6, 6), 36 / 4 = 9 tokens
    assert image.size == (84, 84) and batch["image_grid_thw"].tolist() == [[1, 6, 6]]
    check(embedder, batch, chat("Represent the given image for classification.", image_tokens(9)))
    # Q3:image_cls_dataset.py:30: candidates {"text": label}: no instruction -> the default system message
    import pyarrow.parquet as pq

    raw = pq.read_table(Path(ds.image_root).parents[1] / "hub/MMEB_Test_Instruct/ShapeCls").to_pylist()[0]
    text, _, batch = encode_inputs(embedder, ds, row.candidates[0], "target")
    assert text == chat(DEFAULT, raw["tgt_text"][0])
    check(embedder, batch, text)


def test_image_qa_and_grounding_rows(suite, embedder):
    ds = suite["ShapeCls"]
    path = ds.rows[0].query.image
    qa = image_row({"qry_inst": "<|image_1|>\nRepresent the given image with the following question:",
                    "qry_text": "What is in the image?", "qry_img_path": path, "tgt_inst": "",
                    "tgt_text": ["a circle", "a star"], "tgt_img_path": ["", ""]}, "OK-VQA", "image_qa", 0)
    text, _, _ = encode_inputs(embedder, ds, qa.query, "query")
    # Q3:image_qa_dataset.py:19-26: the colon is punctuation, nothing added; text after the image
    assert text == chat("Represent the given image with the following question:", IMG + "What is in the image?")
    assert encode_inputs(embedder, ds, qa.candidates[1], "target")[0] == chat(DEFAULT, "a star")
    grounding = image_row({"qry_inst": "<|image_1|>\nSelect the portion of the image that isolates the object "
                           "of the given label:", "qry_text": "circle", "qry_img_path": path,
                           "tgt_inst": "<|image_1|>\nRepresent the given cropped image of the object",
                           "tgt_text": ["", ""], "tgt_img_path": [path, path]}, "MSCOCO", "image_i2i_vg", 0)
    text, _, batch = encode_inputs(embedder, ds, grounding.query, "query")
    assert text == chat("Select the portion of the image that isolates the object of the given label:", IMG + "circle")
    # Q3:image_i2i_vg_dataset.py:41-45: blank captions -> the image alone, no instruction (tgt_inst unused)
    text, _, batch = encode_inputs(embedder, ds, grounding.candidates[0], "target")
    assert text == chat(DEFAULT, IMG)
    check(embedder, batch, chat(DEFAULT, image_tokens(9)))
    matching = image_row({"qry_inst": "<|image_1|>\nSelect the portion of the image that follows the language "
                          "expressions.", "qry_text": '"the red circle"', "qry_img_path": path, "tgt_inst": "",
                          "tgt_text": ['"the red circle"', '"a star"'], "tgt_img_path": [path, path]},
                         "RefCOCO-Matching", "image_i2i_vg", 0)
    # Q3:image_i2i_vg_dataset.py:35-40: a caption -> text (unstripped) + image
    assert encode_inputs(embedder, ds, matching.candidates[0], "target")[0] == chat(DEFAULT, IMG + '"the red circle"')


def test_image_retrieval(suite, embedder):
    ds = suite["ShapeT2I"]
    row = ds.rows[0]
    text, _, batch = encode_inputs(embedder, ds, row.query, "query")
    # Q3:image_t2i_eval.py:21-26: qry_inst "Find me an everyday image that matches the given caption:" (bundled)
    # as the system message, the caption alone in the user turn
    caption = row.query.text.split(": ", 1)[1]
    assert text == chat("Find me an everyday image that matches the given caption:", caption)
    assert "image_grid_thw" not in batch
    check(embedder, batch, text)
    # Q3:image_t2i_eval.py:34-41: the candidate image without tgt_inst (blank captions add no text)
    text, _, batch = encode_inputs(embedder, ds, row.candidates[0], "target")
    assert text == chat(DEFAULT, IMG)
    assert batch["image_grid_thw"].tolist() == [[1, 6, 6]]
    check(embedder, batch, chat(DEFAULT, image_tokens(9)))


def test_video_classification(suite, embedder):
    ds = suite["ShapeMotionCls"]
    query = ds.task.queries[0]
    text, clip, batch = encode_inputs(embedder, ds, query, "query")
    # Q3:video_classification_datasets.py:24: a name outside DATASET_INSTRUCTION gets this default
    assert text == chat("Classify the video into the correct category.", VID)
    # scripts/evaluation/mmeb_v2/video.yaml: num_frames 64, max_frames_saved 64: the bundled 16-frame video keeps
    # all 16 (vision_utils.py:282, save_frames :299-300). Each 64x48 frame: fetch_image's smart_resize(48, 64, 32,
    # 4*32*32, 16384*32*32) = 64x64 (VLU:vision_process.py:131-140); fetch_video: min_pixels 128*32*32 = 131072,
    # max_pixels = max(min(768*32*32, 7864320 / 16 * 2), 1.05 * 131072) = 786432 (:449-451); smart_resize(64, 64)
    # is below min: beta = sqrt(131072 / 4096), ceil(64 * 5.657 / 32) * 32 = 384 -> 384x384 -> grid
    # (16 / 2, 384 / 16, 384 / 16) = (8, 24, 24), 24 * 24 / 4 = 144 tokens per frame pair.
    assert len(clip) == 16 and ds.num_frames == 64
    assert batch["video_grid_thw"].tolist() == [[8, 24, 24]]
    check(embedder, batch, chat("Classify the video into the correct category.", video_tokens(8, 144)))
    label = ds.task.corpus[0]
    assert encode_inputs(embedder, ds, label, "target")[0] == chat(DEFAULT, label.text)   # Q3:...datasets.py:45


def test_video_qa(suite, embedder):
    ds = suite["ShapeVideoQA"]
    row = ds.rows[0]
    text, clip, batch = encode_inputs(embedder, ds, row.query, "query")
    # Q3:nextqa_dataset.py:16,63-73: TASK_INST as the system message; qa_template(question, options) after the video
    # (vision_utils.py:34-46: "q\nOptions:\n(A) a0\n...", rstripped)
    inst = ("Given a video and a question, select the most accurate answer from the provided candidates. "
            "Return only the exact text of your chosen answer.")
    body = "Options:\n(A) left\n(B) right\n(C) up\n(D) down\n(E) it does not move"
    assert text.startswith(chat(inst, VID + "which way does the ")[:-len("<|im_end|>\n<|im_start|>assistant\n")])
    assert text.endswith(" move?\n" + body + "<|im_end|>\n<|im_start|>assistant\n")
    assert len(clip) == 16 and batch["video_grid_thw"].tolist() == [[8, 24, 24]]
    question = text.split(VID, 1)[1].split("<|im_end|>")[0]
    check(embedder, batch, chat(inst, video_tokens(8, 144) + question))
    # Q3:nextqa_dataset.py:76: candidates are the lettered options "(X) text", default system message
    assert {encode_inputs(embedder, ds, c, "target")[0] for c in row.candidates} == \
        {chat(DEFAULT, o) for o in body.split("\n")[1:]}


def test_video_retrieval(suite, embedder):
    ds = suite["ShapeVideoRet"]
    query, video = ds.task.queries[0], ds.task.corpus[0]
    text, _, batch = encode_inputs(embedder, ds, query, "query")
    # Q3:msrvtt_dataset.py:14,32-35: the caption under "...visual content." (VLM2Vec: "...visual content:")
    caption = query.text.split("content. ", 1)[1]
    assert text == chat("Find a video that contains the following visual content.", caption)
    check(embedder, batch, text)
    # Q3:msrvtt_dataset.py:43-46: the candidate is the video alone (TASK_INST_TGT commented out, :15)
    text, clip, batch = encode_inputs(embedder, ds, video, "target")
    assert text == chat(DEFAULT, VID)
    assert len(clip) == 16 and batch["video_grid_thw"].tolist() == [[8, 24, 24]]
    check(embedder, batch, chat(DEFAULT, video_tokens(8, 144)))


def test_moment_retrieval(suite, embedder):
    ds = suite["ShapeMoment"]
    row = ds.rows[0]
    text, clip, batch = encode_inputs(embedder, ds, row.query, "query")
    # Q3:moment_retrieval_datasets.py:10,38-44: query = the query folder's frames + the text;
    # video.yaml num_video_frames 64: all 32 bundled query frames (vision_utils.py:282). 32 frames:
    # max_pixels = max(min(786432, 7864320 / 32 * 2), 137625) = 491520 >= 384 * 384 -> 384x384, grid (16, 24, 24)
    inst = "Find the clip that corresponds to the described scene in the given video."
    words = row.query.text.split(inst + " ", 1)[1]
    assert text == chat(inst, VID + words)
    assert len(clip) == 32 and batch["video_grid_thw"].tolist() == [[16, 24, 24]]
    check(embedder, batch, chat(inst, video_tokens(16, 144) + words))
    # Q3:moment_retrieval_datasets.py:71-75: a clip folder sampled to num_clip_frames 8 (video.yaml), no
    # instruction: 8 frames -> max_pixels = max(min(786432, 7864320 / 8 * 2), 137625) = 786432 -> 384x384,
    # grid (4, 24, 24)
    assert ds.candidate_num_frames == 8
    text, clip, batch = encode_inputs(embedder, ds, row.candidates[0], "target", candidate=True)
    assert text == chat(DEFAULT, VID)
    assert len(clip) == 8 and batch["video_grid_thw"].tolist() == [[4, 24, 24]]
    check(embedder, batch, chat(DEFAULT, video_tokens(4, 144)))


@pytest.mark.parametrize("name", ["ShapeDocs", "ShapeSlides"])
def test_visual_document_retrieval(suite, embedder, name):
    ds = suite[name]
    query, page = ds.task.queries[0], ds.task.corpus[0]
    text, _, batch = encode_inputs(embedder, ds, query, "query")
    # Q3:vidore_dataset.py:14,27-30 / visrag_dataset.py:9,30-33: the query text under "...the given query."
    words = query.text.split("query. ", 1)[1]
    assert text == chat("Find a document image that matches the given query.", words)
    check(embedder, batch, text)
    # Q3:vidore_dataset.py:73-76 / visrag_dataset.py:80-83: the page image alone, default system message
    text, image, batch = encode_inputs(embedder, ds, page, "target")
    assert text == chat(DEFAULT, IMG)
    # 96x128 bundled page: smart_resize(128, 96, 32, 4096, 1843200): round(128/32)*32 = 128, 96 -> grid (1, 8, 6),
    # 8 * 6 / 4 = 12 tokens
    assert image.size == (96, 128) and batch["image_grid_thw"].tolist() == [[1, 8, 6]]
    check(embedder, batch, chat(DEFAULT, image_tokens(12)))


def test_odd_frame_count_timestamps_follow_the_padded_frame_list(suite, embedder):
    """VLU:vision_process.py:430-446: a 7-frame list is padded to 8 and indexed 0..7, so the last pair's timestamp
    is (6 + 7) / 2 / 2 = 3.25 -> "<3.2 seconds>" (not (6 + 6) / 2 / 2 = 3.0 from the unpadded indices)."""
    from datamodules.video import VideoClip

    ds = suite["ShapeMotionCls"]
    clip = load_visual(MediaLoader(ds.image_root, 7, ds.max_frames_saved, ds.frame_saving), ds.task.queries[0],
                       ds.name, 0, "parity")
    assert isinstance(clip, VideoClip) and len(clip) == 7
    batch = embedder.input_builder([ds.task.queries[0].text], [clip], "query",
                                   instructions=[ds.task.queries[0].instruction])
    # 7 frames -> 8 after padding: max_pixels = max(min(786432, 7864320 / 8 * 2), 137625) -> 384x384, grid (4, 24, 24)
    assert batch["video_grid_thw"].tolist() == [[4, 24, 24]]
    check(embedder, batch, chat("Classify the video into the correct category.", video_tokens(4, 144)))
    assert "<3.2 seconds>" in video_tokens(4, 144)


def test_a_suite_read_for_another_prompt_is_refused(suite):
    from embedders.prompts import PRESETS
    from evaluation.runner import check_composition

    check_composition(list(suite.values()), PRESETS["qwen3vl_embedding"])
    with pytest.raises(ValueError, match="eval_data.composition=vlm2vec"):
        check_composition(list(suite.values()), PRESETS["plain"])
