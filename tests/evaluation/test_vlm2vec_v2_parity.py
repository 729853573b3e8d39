"""`experiment=vlm2vec_v2_qwen2vl_2b` (prompt `vlm2vec`, the default `vlm2vec` composition of the MMEB-V2 suite)
builds MMEB-V2 inputs as VLM2Vec's own evaluator builds them for its Qwen2-VL model, for every task family: the
formatted text (string for string), the token ids and the image / video inputs (frame count, pixel budget ->
grid), for a query and a candidate of each.

Reference: github.com/TIGER-AI-Lab/VLM2Vec at 6e1e1d4, cited as `V:<file>:<line>` (eval parsers under
src/data/eval_dataset/). Every expected value below is written from reading that code, not computed by embedlab:
`process_input_text` (V:src/model/processor.py:650-673: instruction [+ " " + text], the bare `<|video_pad|>` /
`<|image_pad|>` + " " in front, no chat template), the parsers' own string edits, `Qwen2_VL_process_fn`
(V:src/model/processor.py:302-374: the text as it is into the processor, images with a side under 28 px first
resized to 56 x 56, frames as a video), and the Qwen2-VL image processor copy that sizes images and every video
frame alike (V:src/model/vlm_backbone/qwen2_vl/image_processing_qwen2_vl.py:60-91 smart_resize with factor 28,
:299-336: the first frame's size for all frames, the frame count padded to even by repeating the last), with
`resize_min_pixels` 4*28*28 and `resize_max_pixels` 1280*28*28 (V:src/arguments.py:45-46; the eval scripts set
neither, V:experiments/public/eval/eval_1gpu.sh), 8 frames per video (V:experiments/public/eval/video.yaml) sampled
by `np.linspace(0, n - 1, 8, dtype=int)` (V:src/utils/vision_utils/vision_utils.py:254-284). The processor then
replaces each `<|image_pad|>` / `<|video_pad|>` by grid.prod() / 4 copies
(V:src/model/vlm_backbone/qwen2_vl/processing_qwen2_vl.py:154-174).

Token ids: the tiny Qwen2-VL's word-level tokenizer (the real one is not reachable offline; it carries the same
special tokens, so special-token positions and visual-token counts are exact, word pieces are not), applied to
the expected string with the visual tokens expanded by hand. Image and video settings: the shipped
conf/experiment/vlm2vec_v2_qwen2vl_2b.yaml on the tiny backbone.

Not covered: pixel values (the reference opens frames saved by ffmpeg / cv2 and resizes with its processor copy;
embedlab decodes and resizes with transformers' PIL processor: same sizes and grids); image QA and grounding are
not among the bundled sets: their rows are hand-made in the V2 image-task columns (qry_inst, qry_text,
qry_img_path, tgt_inst, tgt_text, tgt_img_path) on a bundled image.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from datamodules.mmeb import compose_instruction_row, parse_eval_row
from embedders import Embedder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

from v2_parity import bundled_v2_suite, encode_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
IMAGE, VIDEO = "<|image_pad|>", "<|video_pad|>"   # V:src/model/processor.py:62,76 (bare, no vision_start/end)


@pytest.fixture(scope="module")
def suite(bundled_v2_root):
    return bundled_v2_suite(bundled_v2_root, "vlm2vec")


@pytest.fixture(scope="module")
def embedder():
    experiment = OmegaConf.load(ROOT / "conf/experiment/vlm2vec_v2_qwen2vl_2b.yaml")
    assert {"override /prompt": "vlm2vec"} in OmegaConf.to_container(experiment)["defaults"]
    image = OmegaConf.to_container(experiment.model.image, resolve=True)
    # V:src/arguments.py:45-46 (images) and the same image processor for video frames
    # (V:src/model/processor.py:121-134, :336): 3136..1003520 pixels, no total-pixel cap.
    assert (image["min_pixels"], image["max_pixels"]) == (4 * 28 * 28, 1280 * 28 * 28)
    assert image["video"] == {"min_pixels": 3136, "max_pixels": 1003520, "cap_pixels_per_frame": False}
    return Embedder.build("qwen2_vl", config={}, prompt="vlm2vec", image=image,
                          max_length=experiment.model.max_length)


def check(embedder, batch, want: str, tokens: int = 0, visual_rows: bool = False):
    """Token ids = the tokenizer's ids of `want` with its one visual token expanded to `tokens` copies by hand;
    M-RoPE: bare visual tokens (no `<|vision_start|>` before them) get 1D positions in the reference's Qwen2-VL
    (V:src/model/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py:1457-1459 counts visuals by the token after
    `<|vision_start|>`), so no token is typed as a visual slot."""
    for mark in (IMAGE, VIDEO):
        if mark in want:
            want = want.replace(mark, mark * tokens)
    tok = embedder.processor.tokenizer
    assert batch["input_ids"][0].tolist() == tok(want, add_special_tokens=False)["input_ids"]
    assert batch["image_rows"].tolist() == [visual_rows]
    assert not batch["mm_token_type_ids"].any()


def raw_row(ds, index: int = 0) -> dict:
    return pq.read_table(Path(ds.image_root).parents[1] / f"hub/MMEB_Test_Instruct/{ds.name}").to_pylist()[index]


def test_image_classification(suite, embedder):
    ds = suite["ShapeCls"]
    raw, row = raw_row(ds), ds.rows[0]
    assert raw["qry_inst"] == "<|image_1|>\nRepresent the given image for classification" and raw["qry_text"] == ""
    # V:image_cls_dataset.py:17-20: qry_inst without <|image_1|> (not stripped) = "\nRepresent ...";
    # process_input_text: empty text adds nothing, "<|image_pad|> " in front; " \n" -> "\n"; + "\n"
    text, image, batch = encode_inputs(embedder, ds, row.query, "query")
    want = "<|image_pad|>\nRepresent the given image for classification\n"
    assert text == want
    # 84x84: smart_resize(84, 84, 28, 3136, 1003520) (image_processing_qwen2_vl.py:81-91): round(84 / 28) * 28 = 84,
    # 7056 pixels within the budget -> grid (1, 84 / 14, 84 / 14) = (1, 6, 6), 36 / 4 = 9 tokens
    assert image.size == (84, 84) and batch["image_grid_thw"].tolist() == [[1, 6, 6]]
    check(embedder, batch, want, 9, visual_rows=True)
    # V:image_cls_dataset.py:26-27: candidates are the tgt_text strings as they are, no image
    text, _, batch = encode_inputs(embedder, ds, row.candidates[0], "target")
    assert text == raw["tgt_text"][0]
    check(embedder, batch, text)


def test_image_qa_and_grounding_rows(suite, embedder):
    ds = suite["ShapeCls"]
    path = ds.rows[0].query.image
    qa = parse_eval_row(compose_instruction_row(
        {"qry_inst": "<|image_1|>\nRepresent the given image with the following question:",
         "qry_text": "What is in the image?", "qry_img_path": path, "tgt_inst": "",
         "tgt_text": ["a circle", "a star"], "tgt_img_path": ["", ""]}, "OK-VQA", "image_qa"), "OK-VQA", 0)
    # V:image_qa_dataset.py:17-20: "\n" + the instruction without <|image_1|>, stripped; the question after " ";
    # "<|image_pad|> \n" -> "<|image_pad|>\n"; + "\n". Candidates: the texts as they are (:26-27)
    text, _, batch = encode_inputs(embedder, ds, qa.query, "query")
    want = "<|image_pad|>\nRepresent the given image with the following question: What is in the image?\n"
    assert text == want
    check(embedder, batch, want, 9, visual_rows=True)
    assert encode_inputs(embedder, ds, qa.candidates[1], "target")[0] == "a star"
    grounding = parse_eval_row(compose_instruction_row(
        {"qry_inst": "<|image_1|>\nSelect the portion of the image that isolates the object of the given label:",
         "qry_text": "circle", "qry_img_path": path,
         "tgt_inst": "<|image_1|>\nRepresent the given cropped image of the object",
         "tgt_text": ["", ""], "tgt_img_path": [path, path]}, "MSCOCO", "image_i2i_vg"), "MSCOCO", 0)
    text, _, _ = encode_inputs(embedder, ds, grounding.query, "query")   # V:image_i2i_vg_dataset.py:17-20
    assert text == "<|image_pad|>\nSelect the portion of the image that isolates the object of the given label: circle\n"
    # V:image_i2i_vg_dataset.py:35-39: blank captions -> tgt_inst without <|image_1|>, the image token in front,
    # " \n" -> "\n", and (unlike t2i) no "\n" appended
    text, _, batch = encode_inputs(embedder, ds, grounding.candidates[0], "target")
    assert text == "<|image_pad|>\nRepresent the given cropped image of the object"
    check(embedder, batch, text, 9, visual_rows=True)
    matching = parse_eval_row(compose_instruction_row(
        {"qry_inst": "<|image_1|>\nSelect the portion of the image that follows the language expressions.",
         "qry_text": '"the red circle"', "qry_img_path": path,
         "tgt_inst": "<|image_1|>\nSelect the portion of the image that follows the language expressions:",
         "tgt_text": ['"the red circle"', '"a star"'], "tgt_img_path": [path, path]},
        "RefCOCO-Matching", "image_i2i_vg"), "RefCOCO-Matching", 0)
    # V:image_i2i_vg_dataset.py:27-33: a caption -> process_input_text(tgt_inst + " " + caption) with the image
    # token, " \n" -> "\n", + "\n"
    assert encode_inputs(embedder, ds, matching.candidates[0], "target")[0] == \
        '<|image_pad|>\nSelect the portion of the image that follows the language expressions: "the red circle"\n'


def test_image_with_a_side_under_28_pixels_is_first_resized_to_56(suite, embedder):
    """V:src/model/processor.py:329-332: an image with a side under 28 px becomes 56 x 56 before the processor:
    smart_resize(56, 56) = 56 x 56 -> grid (1, 4, 4), 4 tokens (not transformers' smart_resize(100, 20) = 112 x 28
    -> (1, 8, 2) on the image as it is)."""
    batch = embedder.input_builder(["<|image_1|>\nRepresent the given cropped image of the object"],
                                   [Image.new("RGB", (20, 100), "red")], "target")
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
    check(embedder, batch, "<|image_pad|>\nRepresent the given cropped image of the object", 4, visual_rows=True)
    batch = embedder.input_builder(["<|image_1|> x"], [Image.new("RGB", (28, 100), "red")], "target")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 2]]   # sides >= 28 are left to smart_resize: 112 x 28


def test_image_retrieval(suite, embedder):
    ds = suite["ShapeT2I"]
    raw, row = raw_row(ds), ds.rows[0]
    # V:image_t2i_eval.py:18-23: qry_inst (its <|image_1|>, if any, as the image token) + " " + qry_text + "\n",
    # no image (VisDial gets a second "\n")
    text, _, batch = encode_inputs(embedder, ds, row.query, "query")
    want = raw["qry_inst"] + " " + raw["qry_text"] + "\n"
    assert text == want and "image_grid_thw" not in batch
    check(embedder, batch, want)
    assert compose_instruction_row(raw, "VisDial", "image_t2i")["qry_text"] == want + "\n"
    # V:image_t2i_eval.py:34-38: blank captions -> "<|image_pad|>" + "\n" + the instruction, + "\n"
    assert raw["tgt_inst"] == "<|image_1|>\nRepresent the given image." and not raw["tgt_text"][0].strip()
    text, _, batch = encode_inputs(embedder, ds, row.candidates[0], "target")
    assert text == "<|image_pad|>\nRepresent the given image.\n"
    assert batch["image_grid_thw"].tolist() == [[1, 6, 6]]
    check(embedder, batch, text, 9, visual_rows=True)


def test_video_classification(suite, embedder):
    ds = suite["ShapeMotionCls"]
    query = ds.task.queries[0]
    text, clip, batch = encode_inputs(embedder, ds, query, "query")
    # V:video_classification_datasets.py:27: process_input_text(DATASET_INSTRUCTION[name], add_video_token=True).
    # The bundled name is not in DATASET_INSTRUCTION (the reference would raise KeyError); embedlab gives
    # unknown names Kinetics-700's instruction (V:video_classification_utils.py DATASET_INSTRUCTION).
    want = "<|video_pad|> Recognize the category of the video content."
    assert text == want
    # video.yaml: num_frames 8, max_frames_saved 64: the 16-frame bundled video is saved whole (vision_utils.py:
    # 299-300) and sampled at linspace(0, 15, 8) -> 8 frames. Each 64x48 frame: smart_resize(48, 64, 28, 3136,
    # 1003520): round(48/28) * 28 = 56, round(64/28) * 28 = 56 -> 3136 (not below min) -> 56x56 -> grid
    # (8 / 2, 4, 4), 4 * 4 * 4 / 4 = 16 tokens
    assert len(clip) == 8 and clip.frames[0].size == (64, 48) and ds.num_frames == 8
    assert batch["video_grid_thw"].tolist() == [[4, 4, 4]]
    check(embedder, batch, want, 16, visual_rows=True)
    label = ds.task.corpus[0]   # V:video_classification_datasets.py:34,61-64: the bare label text
    assert encode_inputs(embedder, ds, label, "target")[0] == label.text and "<|" not in label.text


def test_video_qa(suite, embedder):
    ds = suite["ShapeVideoQA"]
    row = ds.rows[0]
    text, clip, batch = encode_inputs(embedder, ds, row.query, "query")
    # V:nextqa_dataset.py:10-18,33-34: f"{video_token} {TASK_PROMPT} {question}" (TASK_PROMPT ends with "Question: ",
    # so two spaces before the question), then qa_template (vision_utils.py:34-46): "\nOptions:\n(A) ..." rstripped
    prompt = ("<|video_pad|> Given a video and a question, select the most accurate answer from the provided "
              "candidates. Return only the exact text of your chosen answer. Question:  ")
    options = ["left", "right", "up", "down", "it does not move"]
    assert text.startswith(prompt + "which way does the ")
    assert text.endswith(" move?\nOptions:\n" + "\n".join(f"({'ABCDE'[k]}) {o}" for k, o in enumerate(options)))
    assert len(clip) == 8 and batch["video_grid_thw"].tolist() == [[4, 4, 4]]
    check(embedder, batch, text, 16, visual_rows=True)
    # V:nextqa_dataset.py:65: candidates = the raw option texts (no letters, no instruction)
    assert {encode_inputs(embedder, ds, c, "target")[0] for c in row.candidates} == set(options)


def test_video_retrieval(suite, embedder):
    ds = suite["ShapeVideoRet"]
    query, video = ds.task.queries[0], ds.task.corpus[0]
    # V:msrvtt_dataset.py:10,24: TASK_INST_QRY + " " + caption, no visual
    text, _, batch = encode_inputs(embedder, ds, query, "query")
    caption = query.text.split("content: ", 1)[1]
    assert text == "Find a video that contains the following visual content: " + caption
    check(embedder, batch, text)
    # V:msrvtt_dataset.py:11,32: "<|video_pad|> " + TASK_INST_TGT, 8 frames
    text, clip, batch = encode_inputs(embedder, ds, video, "target")
    assert text == "<|video_pad|> Understand the content of the provided video."
    assert len(clip) == 8 and batch["video_grid_thw"].tolist() == [[4, 4, 4]]
    check(embedder, batch, text, 16, visual_rows=True)


def test_moment_retrieval(suite, embedder):
    ds = suite["ShapeMoment"]
    row = ds.rows[0]
    # V:moment_retrieval_datasets.py:10,37-39: the query folder sampled to num_video_frames 8 (32 saved frames ->
    # linspace(0, 31, 8)) and "<|video_pad|> " + TASK_INST_QRY + " " + the query
    text, clip, batch = encode_inputs(embedder, ds, row.query, "query")
    words = row.query.text.split("video: ", 1)[1]
    want = "<|video_pad|> Find the clip that corresponds to the described scene in the given video: " + words
    assert text == want
    assert len(clip) == 8 and batch["video_grid_thw"].tolist() == [[4, 4, 4]]
    check(embedder, batch, want, 16, visual_rows=True)
    # V:moment_retrieval_datasets.py:11,64,71: every clip folder sampled to num_clip_frames 8, "<|video_pad|> " +
    # TASK_INST_TGT
    text, clip, batch = encode_inputs(embedder, ds, row.candidates[0], "target", candidate=True)
    assert text == "<|video_pad|> Understand the content of the provided video."
    assert len(clip) == 8 and batch["video_grid_thw"].tolist() == [[4, 4, 4]]
    check(embedder, batch, text, 16, visual_rows=True)


@pytest.mark.parametrize("name", ["ShapeDocs", "ShapeSlides"])
def test_visual_document_retrieval(suite, embedder, name):
    ds = suite[name]
    query, page = ds.task.queries[0], ds.task.corpus[0]
    # V:vidore_dataset.py:9,23 / visrag_dataset.py: TASK_INST_QRY + " " + the query, no visual
    text, _, batch = encode_inputs(embedder, ds, query, "query")
    assert text == "Find a document image that matches the given query: " + query.text.split("query: ", 1)[1]
    check(embedder, batch, text)
    # V:vidore_dataset.py:10,64: "<|image_pad|> " + TASK_INST_TGT with the page image
    text, image, batch = encode_inputs(embedder, ds, page, "target")
    assert text == "<|image_pad|> Understand the content of the provided document image."
    # 96x128 page: smart_resize(128, 96, 28, ...): round(128/28) * 28 = 140, round(96/28) * 28 = 84 -> grid
    # (1, 10, 6), 60 / 4 = 15 tokens
    assert image.size == (96, 128) and batch["image_grid_thw"].tolist() == [[1, 10, 6]]
    check(embedder, batch, text, 15, visual_rows=True)


def test_model_card_resize_snippet_follows_the_small_image_rule():
    """The `resize(image)` a shipped model card gives users does what embedlab did (embedders/saving.py states it)."""
    from embedders.backbones.base import check_resize, resize_image
    from shipping.usage import _resize_snippet

    policy = check_resize(OmegaConf.to_container(
        OmegaConf.load(ROOT / "conf/experiment/vlm2vec_v2_qwen2vl_2b.yaml").model.image.resize))
    ns: dict = {}
    exec("from PIL import Image\n" + _resize_snippet(policy), ns)
    for size in ((20, 100), (100, 27), (28, 28), (300, 200)):
        image = Image.new("RGB", size, "red")
        assert ns["resize"](image).size == resize_image(image, policy).size == (size if min(size) >= 28 else (56, 56))
