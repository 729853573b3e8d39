"""`experiment=published/gme_qwen2vl_2b` (prompt `gme`, the `gme` composition of the MMEB-V2 suite) builds MMEB-V2
inputs as VLM2Vec's evaluator builds them for GME (`model_backbone = "gme"`), for every task family: the formatted
text (string for string), the token ids and the image input (grid; for videos the middle sampled frame as one
image), for a query and a candidate of each.

Reference: github.com/TIGER-AI-Lab/VLM2Vec at 6e1e1d4, cited as `V:<file>:<line>` (parsers under
src/data/eval_dataset/). Every expected value is written from reading that code: `process_input_text` for GME
(V:src/model/processor.py:655-659: `instruction + " " + text`, `instruction + " "` without text, no visual token),
the parsers' own string edits, `Gme_process_fn` (V:src/model/processor.py:376-381: texts and images as they are),
`MMEBModel.encode_input` (V:src/model/model.py:75-88: "<|image_pad|>\\n" removed, a frame list -> its middle frame
`imgs[len(imgs) // 2]`), and `GmeQwen2VL.embed` (V:src/model/baseline_backbone/gme/gme_inference.py:115-145: the
system turn "You are a helpful assistant." always (`instruction` is never passed, :120-121), the wrapped image
token before the text (:126), the layout of :131 ending in "<|endoftext|>", `max_length` 1800 truncated
(:25,134-140)); the image then sized by the Qwen2-VL processor within 3,136..1,003,520 pixels
(V:src/model/processor.py:121-134) after fetch_image (:225-228,307-317; the two roundings checked on a large image
where they give another grid than one would). The processor replaces `<|image_pad|>` by grid.prod() / 4 copies.

Token ids: the tiny Qwen2-VL's word-level tokenizer (the real one is not reachable offline; it carries the same
special tokens, so special-token positions and image-token counts are exact, word pieces are not), applied to the
expected string with the image token expanded by hand. Not covered: pixel values (the reference's processor copy
resizes the fetch_image output; embedlab's transformers processor: same sizes and grids).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from embedders import Embedder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

from v2_parity import bundled_v2_suite, encode_inputs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# V:gme_inference.py:131 (system turn :54,120-121), image token :126
HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
TAIL = "<|im_end|>\n<|im_start|>assistant\n<|endoftext|>"
IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


@pytest.fixture(scope="module")
def suite(bundled_v2_root):
    return bundled_v2_suite(bundled_v2_root, "gme")


@pytest.fixture(scope="module")
def embedder():
    experiment = OmegaConf.load(ROOT / "conf/experiment/published/gme_qwen2vl_2b.yaml")
    assert OmegaConf.to_container(experiment)["defaults"] == [{"override /model": "gme_qwen2vl_2b"},
                                                               {"override /prompt": "gme"}]
    model = OmegaConf.load(ROOT / "conf/model/gme_qwen2vl_2b.yaml")
    assert model.path == "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct"   # named only, never downloaded here
    # V:gme_inference.py:25 max_length 1800; V:src/model/processor.py:121-134 (arguments.py:45-46 defaults)
    assert model.max_length == 1800 and (model.image.min_pixels, model.image.max_pixels) == (3136, 1003520)
    assert model.pooling == "last" and model.normalize is True   # V:gme_inference.py:101-112
    # V:gme_inference.py:225-228,307-317: fetch_image (qwen-vl-utils smart_resize, 4..16384 x 28^2) first
    assert OmegaConf.to_container(model.image.resize) == {"mode": "smart", "factor": 28, "min_pixels": 3136,
                                                          "max_pixels": 12845056, "resample": "bicubic"}
    prompt = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/prompt/gme.yaml"))
    return Embedder.build("qwen2_vl", config={}, prompt=prompt, pooling="last",
                          image=OmegaConf.to_container(model.image), max_length=model.max_length)


def check(embedder, batch, body: str, tokens: int = 0):
    """The whole GME string around `body`; token ids = the tokenizer's ids of it with the image token expanded to
    `tokens` copies by hand; the wrapped image tokens are typed as image slots (3D M-RoPE as in the reference's
    Qwen2-VL, which finds images by the token after `<|vision_start|>`)."""
    want = HEAD + body + TAIL
    tok = embedder.processor.tokenizer
    ids = tok(want.replace("<|image_pad|>", "<|image_pad|>" * tokens), add_special_tokens=False)["input_ids"]
    assert batch["input_ids"][0].tolist() == ids
    assert ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")   # the pooled last token
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert batch["mm_token_type_ids"][0].tolist() == [int(i == pad) for i in ids]
    return want


def raw_row(ds, index: int = 0) -> dict:
    return pq.read_table(Path(ds.image_root).parents[1] / f"hub/MMEB_Test_Instruct/{ds.name}").to_pylist()[index]


def test_image_classification(suite, embedder):
    ds = suite["ShapeCls"]
    raw, row = raw_row(ds), ds.rows[0]
    assert raw["qry_inst"] == "<|image_1|>\nRepresent the given image for classification" and raw["qry_text"] == ""
    # V:image_cls_dataset.py:17-20: "\nRepresent ..." (placeholder removed); process_input_text (GME, empty text)
    # adds " "; no " \n" to replace; + "\n". The image goes before the text (gme_inference.py:126).
    text, image, batch = encode_inputs(embedder, ds, row.query, "query")
    body = IMAGE + "\nRepresent the given image for classification \n"
    assert text == HEAD + body + TAIL
    # 84x84: fetch_image smart_resize(84, 84, 28, 3136, 12845056) = 84x84 (gme_inference.py:246-277), then the
    # processor's (3136..1003520) 84x84 -> grid (1, 6, 6), 36 / 4 = 9 tokens
    assert image.size == (84, 84) and batch["image_grid_thw"].tolist() == [[1, 6, 6]]
    check(embedder, batch, body, 9)
    # V:image_cls_dataset.py:26-27: the label texts, formatted by the same embed (default system turn)
    text, _, batch = encode_inputs(embedder, ds, row.candidates[0], "target")
    assert text == HEAD + raw["tgt_text"][0] + TAIL and "image_grid_thw" not in batch
    check(embedder, batch, raw["tgt_text"][0])


def test_image_qa_grounding_and_retrieval_rows(suite, embedder):
    """Image QA and grounding are not among the bundled sets: V2 rows through the GME row builder."""
    from datamodules.mmeb_v2_gme import image_row
    path = suite["ShapeCls"].rows[0].query.image
    qa = image_row({"qry_inst": "<|image_1|>\nRepresent the given image with the following question:",
                    "qry_text": "What is in the image?", "qry_img_path": path, "tgt_inst": "",
                    "tgt_text": ["a circle", "a star"], "tgt_img_path": ["", ""]}, "OK-VQA", "image_qa", 0)
    # V:image_qa_dataset.py:17-20: "\n" + stripped instruction + " " + question; + "\n"
    assert qa.query.text == "\nRepresent the given image with the following question: What is in the image?\n"
    assert qa.query.image == path and qa.candidates[1].text == "a star"
    grounding = image_row({"qry_inst": "<|image_1|>\nSelect the portion of the image that isolates the object of the "
                           "given label:", "qry_text": "circle", "qry_img_path": path,
                           "tgt_inst": "<|image_1|>\nRepresent the given cropped image of the object",
                           "tgt_text": ["", ""], "tgt_img_path": [path, path]}, "MSCOCO", "image_i2i_vg", 0)
    assert grounding.query.text == "\nSelect the portion of the image that isolates the object of the given label: circle\n"
    # V:image_i2i_vg_dataset.py:35-38: blank captions -> process_input_text(tgt_inst, text='') = tgt_inst + " ",
    # no "\n" appended
    assert grounding.candidates[0].text == "\nRepresent the given cropped image of the object "
    assert grounding.candidates[0].image == path
    ds = suite["ShapeCls"]
    text, _, batch = encode_inputs(embedder, ds, grounding.candidates[0], "target")
    check(embedder, batch, IMAGE + "\nRepresent the given cropped image of the object ", 9)
    # V:image_t2i_eval.py:18: a query instruction's <|image_1|> becomes <|image_pad|>, then model.py:77 drops
    # "<|image_pad|>\n"
    t2i = image_row({"qry_inst": "<|image_1|>\nFind a Wikipedia image that answers this question:",
                     "qry_text": "who?", "qry_img_path": "", "tgt_inst": "<|image_1|>\nRepresent the given image.",
                     "tgt_text": ["", ""], "tgt_img_path": [path, path]}, "WebQA", "image_t2i", 0)
    assert t2i.query.text == "Find a Wikipedia image that answers this question: who?\n" and not t2i.query.image


def test_image_retrieval(suite, embedder):
    ds = suite["ShapeT2I"]
    raw, row = raw_row(ds), ds.rows[0]
    # V:image_t2i_eval.py:18-19: qry_inst + " " + qry_text + "\n", no image
    text, _, batch = encode_inputs(embedder, ds, row.query, "query")
    assert text == HEAD + raw["qry_inst"] + " " + raw["qry_text"] + "\n" + TAIL and "image_grid_thw" not in batch
    check(embedder, batch, raw["qry_inst"] + " " + raw["qry_text"] + "\n")
    # V:image_t2i_eval.py:34-37: blank captions -> "\nRepresent the given image." + " " (process_input_text), + "\n"
    assert raw["tgt_inst"] == "<|image_1|>\nRepresent the given image." and not raw["tgt_text"][0].strip()
    text, _, batch = encode_inputs(embedder, ds, row.candidates[0], "target")
    assert text == HEAD + IMAGE + "\nRepresent the given image. \n" + TAIL
    assert batch["image_grid_thw"].tolist() == [[1, 6, 6]]
    check(embedder, batch, IMAGE + "\nRepresent the given image. \n", 9)


def middle_frame_check(clip, batch):
    """V:model.py:80-84: the 8 sampled frames -> frames[8 // 2] = frames[4], one image; each 64x48 frame:
    fetch_image smart_resize(48, 64) = 56x56, processor 56x56 -> grid (1, 4, 4), 16 / 4 = 4 tokens; no video input."""
    assert len(clip) == 8
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] and "video_grid_thw" not in batch
    return clip.frames[4]


def test_video_classification(suite, embedder):
    ds = suite["ShapeMotionCls"]
    text, clip, batch = encode_inputs(embedder, ds, ds.task.queries[0], "query")
    # V:video_classification_datasets.py:27: process_input_text(instruction) for GME = instruction + " " (the
    # bundled name is not in DATASET_INSTRUCTION: Kinetics-700's, as the vlm2vec composition)
    body = IMAGE + "Recognize the category of the video content. "
    assert text == HEAD + body + TAIL
    frame = middle_frame_check(clip, batch)
    pixels = embedder.input_builder([ds.task.queries[0].text], [frame], "query")["pixel_values"]
    assert torch.equal(batch["pixel_values"], pixels)   # exactly the middle frame's pixels
    check(embedder, batch, body, 4)
    label = ds.task.corpus[0]   # V:video_classification_datasets.py:34: the bare label
    assert encode_inputs(embedder, ds, label, "target")[0] == HEAD + label.text + TAIL


def test_video_qa(suite, embedder):
    ds = suite["ShapeVideoQA"]
    row = ds.rows[0]
    text, clip, batch = encode_inputs(embedder, ds, row.query, "query")
    # V:nextqa_dataset.py:10-15,33: process_query writes VLM_VIDEO_TOKENS["gme"] = "<|video_pad|>" + " " (processor.py:80)
    # in front; embedlab drops them (transformers 5 refuses a video token without a video: the one difference).
    # TASK_PROMPT ends with "Question: " (two spaces)
    prompt = (IMAGE + "Given a video and a question, select the most accurate answer from the provided "
              "candidates. Return only the exact text of your chosen answer. Question:  ")
    assert text.startswith(HEAD + prompt + "which way does the ") and text.endswith("(E) it does not move" + TAIL)
    middle_frame_check(clip, batch)
    check(embedder, batch, text[len(HEAD):-len(TAIL)], 4)
    with torch.no_grad():   # the tiny model embeds the middle-frame row
        assert torch.isfinite(embedder(batch)).all()
    assert {encode_inputs(embedder, ds, c, "target")[0] for c in row.candidates} == \
        {HEAD + o + TAIL for o in ["left", "right", "up", "down", "it does not move"]}   # nextqa_dataset.py:65


def test_video_retrieval(suite, embedder):
    ds = suite["ShapeVideoRet"]
    query, video = ds.task.queries[0], ds.task.corpus[0]
    # V:msrvtt_dataset.py:10,24: TASK_INST_QRY + " " + caption
    text, _, batch = encode_inputs(embedder, ds, query, "query")
    caption = query.text.split("content: ", 1)[1]
    check(embedder, batch, "Find a video that contains the following visual content: " + caption)
    # V:msrvtt_dataset.py:11,32: process_input_text(TASK_INST_TGT) = TASK_INST_TGT + " ", the middle frame
    text, clip, batch = encode_inputs(embedder, ds, video, "target")
    assert text == HEAD + IMAGE + "Understand the content of the provided video. " + TAIL
    middle_frame_check(clip, batch)
    check(embedder, batch, IMAGE + "Understand the content of the provided video. ", 4)


def test_moment_retrieval(suite, embedder):
    ds = suite["ShapeMoment"]
    row = ds.rows[0]
    # V:moment_retrieval_datasets.py:10,37-39: the query folder sampled to 8 frames, TASK_INST_QRY + " " + query
    text, clip, batch = encode_inputs(embedder, ds, row.query, "query")
    words = row.query.text.split("video: ", 1)[1]
    body = IMAGE + "Find the clip that corresponds to the described scene in the given video: " + words
    assert text == HEAD + body + TAIL
    middle_frame_check(clip, batch)
    check(embedder, batch, body, 4)
    # V:moment_retrieval_datasets.py:11,64,71: each clip sampled to 8 frames, TASK_INST_TGT + " "
    text, clip, batch = encode_inputs(embedder, ds, row.candidates[0], "target", candidate=True)
    assert text == HEAD + IMAGE + "Understand the content of the provided video. " + TAIL
    middle_frame_check(clip, batch)


@pytest.mark.parametrize("name", ["ShapeDocs", "ShapeSlides"])
def test_visual_document_retrieval(suite, embedder, name):
    ds = suite[name]
    query, page = ds.task.queries[0], ds.task.corpus[0]
    # V:vidore_dataset.py:9,23 / visrag_dataset.py: TASK_INST_QRY + " " + query
    text, _, batch = encode_inputs(embedder, ds, query, "query")
    check(embedder, batch, "Find a document image that matches the given query: " + query.text.split("query: ", 1)[1])
    # V:vidore_dataset.py:10,64: process_input_text(TASK_INST_TGT) = TASK_INST_TGT + " ", the page image
    text, image, batch = encode_inputs(embedder, ds, page, "target")
    body = IMAGE + "Understand the content of the provided document image. "
    assert text == HEAD + body + TAIL
    # 96x128 page: fetch_image smart_resize(128, 96) = 140x84 (round to 28), processor 140x84 -> grid (1, 10, 6),
    # 60 / 4 = 15 tokens
    assert image.size == (96, 128) and batch["image_grid_thw"].tolist() == [[1, 10, 6]]
    check(embedder, batch, body, 15)


def test_image_budget_is_fetch_image_then_the_processor(embedder):
    """A 3656 x 3114 image. fetch_image (V:gme_inference.py:246-277, 307-317): round(3114 / 28) * 28 = 3108,
    round(3656 / 28) * 28 = 3668, 11,400,144 pixels <= 12,845,056 -> 3668 x 3108. The processor (3136..1,003,520):
    beta = sqrt(11,400,144 / 1,003,520) = 3.3705; floor(3108 / 3.3705 / 28) * 28 = 896, floor(3668 / 3.3705 / 28)
    * 28 = 1064 -> grid (1, 64, 76), 64 * 76 / 4 = 1216 tokens. One step from 3114 x 3656 would give 924 x 1064."""
    from embedders.backbones.base import check_resize, resize_image
    from shipping.usage import _resize_snippet
    image = Image.new("RGB", (3656, 3114), "red")
    batch = embedder.input_builder(["x"], [image], "query")
    assert batch["image_grid_thw"].tolist() == [[1, 64, 76]]
    assert (batch["input_ids"][0] == embedder.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum() == 1216
    policy = check_resize(embedder.image["resize"])
    ns: dict = {}
    exec("from PIL import Image\n" + _resize_snippet(policy), ns)   # what a shipped model card tells users
    for size in ((3656, 3114), (20, 100), (84, 84), (5000, 20)):
        im = Image.new("RGB", size, "red")
        assert ns["resize"](im).size == resize_image(im, policy).size
    assert resize_image(image, policy).size == (3668, 3108)
    assert resize_image(Image.new("RGB", (20, 100), "red"), policy).size == (28, 112)   # round(20/28) = 1 -> 28


def test_left_padding_and_last_token_pooling(embedder):
    """V:gme_inference.py:53,101-104: left padding, the last position pooled. embedlab's Qwen2-VL family pads left
    too and pools each row's last non-padding token, so a row pooled in a padded batch is the row alone."""
    from embedders.backbones.base import check_resize
    texts = ["a short text", "a much longer text with many more words than the first one"]
    batch = embedder.input_builder(texts, None, "query")
    assert batch["attention_mask"][:, -1].tolist() == [1, 1] and batch["attention_mask"][0, 0] == 0   # left padded
    with torch.no_grad():
        together = embedder(batch)
        alone = torch.cat([embedder(embedder.input_builder([t], None, "query")) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="min_pixels"):
        check_resize({"mode": "smart", "factor": 28, "min_pixels": 5000, "max_pixels": 3136})
