"""Published-model profiles (`experiment=published/<model>`: a model config + a prompt config) reproduce their
reference's preprocessing: the exact text with its special tokens, the number and place of image tokens, the image
grid, the M-RoPE positions and the pooled position, on rows of every meta-task; and each profile trains one step
with its tiny family.

Expected values are worked out from the reference code (file:line cited next to each) and written here:
VLM2Vec = github.com/TIGER-AI-Lab/VLM2Vec branch v1, Gen2Embed = github.com/yeongjoonJu/Gen2Embed,
LLaVE = github.com/DeepLearnXMU/LLaVE. The real tokenizers are not reachable offline: the tiny word-level
tokenizers carry the same special tokens, so strings, special-token positions, image-token counts, grids and
positions are exact; word pieces are not (the real Qwen2 tokenizer makes "\\n" a token of its own, the word-level
one drops whitespace).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from embedders import Embedder
from evaluation.engine import EvalDataset
from evaluation.runner import score
from training import job as train

G2E_SYSTEM = "Given an image, summarize the provided image in one word. Given only text, describe the text in one word."
G2E_HEAD = f"<|im_start|>system\n{G2E_SYSTEM}<|im_end|>\n<|im_start|>user\n"
G2E_TAIL = "<|im_end|>\n<|im_start|>assistant\n"
LLAVE_HEAD = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
LLAVE_TAIL = "<|im_end|>\n<|im_start|>assistant\n\n<|im_end|>\n"
QRY_IMG = "\nRepresent the given text/image in one word."
QRY_TXT = "\nRepresent the given text in one word."

PROFILES = {  # profile -> (family, prompt)
    "vlm2vec_qwen2vl_2b": ("qwen2_vl", "vlm2vec"),
    "vlm2vec_qwen2vl_7b": ("qwen2_vl", "vlm2vec"),
    "saha_qwen2vl_2b": ("qwen2_vl", "hierarchical"),
    "gen2embed_qwen2vl_2b": ("qwen2_vl", "hierarchical"),
    "llave_0.5b": ("llava_onevision", "llave"),
    "llave_2b": ("llava_onevision", "llave"),
    "llave_7b": ("llava_onevision", "llave"),
    "gme_qwen2vl_2b": ("qwen2_vl", "gme"),
}

#: One row per meta-task (MMEB-eval texts), plus WebQA's placeholder without an image:
#: name -> (query text, query has an image, candidate text, candidate has an image).
ROWS = {
    "cls": ("<|image_1|> Represent the given image for classification", True, "dog", False),
    "vqa": ("<|image_1|> Represent the given image with the following question: What is in the image?", True,
            "a dog", False),
    "ret": ("Find me an everyday image that matches the given caption: A dog.", False,
            "<|image_1|> Represent the given image.", True),
    "webqa": ("<|image_1|>\nFind a Wikipedia image that answers this question: who?", False,
              "<|image_1|> Represent the given Wikipedia image with related text information: Paris", True),
    "grd": ("<|image_1|> Select the portion of the image that isolates the object of the given label: dog", True,
            "<|image_1|> Represent the given cropped image of the object", True),
}

# Exact strings. VLM2Vec: placeholder -> <|image_pad|> in place, image or not (src/dataset.py:83,130), no template,
# the same on both sides. Gen2Embed: src/model_utils.py:244-253 (suffix by image presence on the query side,
# src/collator.py:425-438 / src/dataset.py:578-583 choose Q or D). LLaVE: llava/eval/model_embed.py:95-98 with
# preprocess_multimodal (:45-67; these texts already start with <image>) and preprocess_qwen (train.py:567-640).
EXPECTED_TEXT = {
    "vlm2vec": {
        "cls": ("<|image_pad|> Represent the given image for classification", "dog"),
        "webqa": ("<|image_pad|>\nFind a Wikipedia image that answers this question: who?",
                  "<|image_pad|> Represent the given Wikipedia image with related text information: Paris"),
        "ret": ("Find me an everyday image that matches the given caption: A dog.",
                "<|image_pad|> Represent the given image."),
    },
    "hierarchical": {
        "cls": (G2E_HEAD + "<|image_pad|> Represent the given image for classification" + QRY_IMG + G2E_TAIL,
                G2E_HEAD + "dog" + G2E_TAIL),
        "webqa": (G2E_HEAD + "<|image_pad|>\nFind a Wikipedia image that answers this question: who?" + QRY_TXT
                  + G2E_TAIL,
                  G2E_HEAD + "<|image_pad|> Represent the given Wikipedia image with related text information: Paris"
                  + G2E_TAIL),
        "ret": (G2E_HEAD + "Find me an everyday image that matches the given caption: A dog." + QRY_TXT + G2E_TAIL,
                G2E_HEAD + "<|image_pad|> Represent the given image." + G2E_TAIL),
    },
    "llave": {
        "cls": (LLAVE_HEAD + "<image> Represent the given image for classification" + LLAVE_TAIL,
                LLAVE_HEAD + "dog" + LLAVE_TAIL),
        "webqa": (LLAVE_HEAD + "<|image_1|>\nFind a Wikipedia image that answers this question: who?" + LLAVE_TAIL,
                  LLAVE_HEAD + "<image> Represent the given Wikipedia image with related text information: Paris"
                  + LLAVE_TAIL),
        "ret": (LLAVE_HEAD + "Find me an everyday image that matches the given caption: A dog." + LLAVE_TAIL,
                LLAVE_HEAD + "<image> Represent the given image." + LLAVE_TAIL),
    },
}


def _profile(compose_cfg, name: str, *extra: str):
    cfg = compose_cfg("evaluate", [f"experiment=published/{name}", *extra])
    return OmegaConf.to_container(cfg.model, resolve=True), OmegaConf.to_container(cfg.prompt, resolve=True)


def _embedder(model: dict, prompt: dict, seed: int = 0, **overrides) -> Embedder:
    """The profile's settings on the tiny model of its family (random weights, the real image processor)."""
    torch.manual_seed(seed)
    kw = dict(pooling=model["pooling"], normalize=model["normalize"], prompt=prompt, max_length=model["max_length"],
              image=model["image"])
    kw.update(overrides)
    return Embedder.build(model["family"], config={}, **kw)


def _img(w, h, color="red"):
    im = Image.new("RGB", (w, h), color)
    im.paste((10, 10, 10), (0, 0, max(1, w // 3), max(1, h // 3)))
    return im


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_composes_with_its_reference_settings(compose_cfg, name):
    model, prompt = _profile(compose_cfg, name)
    family, prompt_name = PROFILES[name]
    assert model["family"] == family and prompt["name"] == prompt_name and model["path"]
    assert model["pooling"] == "last" and model["normalize"] is True   # every reference: last token, L2-normalised
    if prompt_name == "vlm2vec":
        # v1 eval.py:45 (AutoProcessor of Qwen2-VL-*-Instruct: min 3136, max 12845056), src/dataset.py:16-20 (1344²),
        # --max_len unset (the tokenizer's 32768).
        assert model["image"] == {"min_pixels": 3136, "max_pixels": 12845056,
                                  "resize": {"mode": "fixed", "size": [1344, 1344], "resample": "bicubic"}}
        assert model["max_length"] == 32768
    elif prompt_name == "hierarchical":
        # Gen2Embed README eval command: --image_resolution random --max_len 2048; src/dataset.py:58-79.
        assert model["image"]["resize"] == {"mode": "clamp", "max_aspect": 2, "min_side": 336, "max_side": 992,
                                            "resample": "lanczos"}
        assert model["max_length"] == 2048 and prompt["target_as_query"] == ["RefCOCO-Matching"]
    elif prompt_name == "gme":
        # VLM2Vec gme_inference.py:25 (max_length 1800), src/model/processor.py:121-134 (3136..1003520 pixels);
        # the rest is checked per MMEB-V2 task family in tests/evaluation/test_gme_parity.py.
        assert model["image"] == {"min_pixels": 3136, "max_pixels": 1003520,   # after fetch_image (:225-228)
                                  "resize": {"mode": "smart", "factor": 28, "min_pixels": 3136,
                                             "max_pixels": 12845056, "resample": "bicubic"}}
        assert model["max_length"] == 1800
        assert prompt["mmeb_v2_composition"] == "gme" and prompt["video_as_image"] == "middle"
    else:
        assert model["image"] is None   # the checkpoint's anyres tiling


@pytest.mark.parametrize("prompt_name,name", [("vlm2vec", "vlm2vec_qwen2vl_2b"), ("hierarchical", "saha_qwen2vl_2b"),
                                              ("llave", "llave_0.5b")])
def test_profile_formats_every_meta_task_as_the_reference(compose_cfg, prompt_name, name):
    model, prompt = _profile(compose_cfg, name)
    emb = _embedder(model, prompt)
    fmt = emb.input_builder.format
    for row, (q, q_img) in ((r, (ROWS[r][0], ROWS[r][1])) for r in ROWS):
        c, c_img = ROWS[row][2], ROWS[row][3]
        got = (fmt([q], [object() if q_img else None], "query")[0], fmt([c], [object() if c_img else None], "target")[0])
        if row in EXPECTED_TEXT[prompt_name]:
            assert got == EXPECTED_TEXT[prompt_name][row], row
        token = "<image>" if prompt_name == "llave" else "<|image_pad|>"
        # one image token per image (before expansion), none elsewhere except a placeholder without an image, which
        # VLM2Vec and Gen2Embed render as the token (stray) and LLaVE leaves as text
        stray = row == "webqa" and prompt_name != "llave"
        assert got[0].count(token) == int(q_img or stray) and got[1].count(token) == int(c_img), row


def _image_block(ids: list[int], image_id: int) -> tuple[int, int]:
    """(start, length) of the contiguous run of image tokens in an unpadded row; asserts there is exactly one."""
    idx = [i for i, t in enumerate(ids) if t == image_id]
    assert idx and idx == list(range(idx[0], idx[0] + len(idx))), "image tokens must form one contiguous block"
    return idx[0], len(idx)


def _unpadded(inputs, row: int) -> list[int]:
    return inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()


def reference_rope_index(ids: list[int], grids: list[list[int]], image_id: int, vision_start_id: int,
                         merge: int = 2) -> list[list[int]]:
    """VLM2Vec v1 src/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py:1456-1516 for one unpadded row (transformers 4.46's
    rule): images are counted from <|vision_start|> followed by an image token; without it every token is text."""
    starts = [i for i, t in enumerate(ids) if t == vision_start_id]
    image_nums = sum(1 for i in starts if i + 1 < len(ids) and ids[i + 1] == image_id)
    parts: list[list[int]] = [[], [], []]
    st, grid_idx = 0, 0

    def nxt():
        return max(max(p) for p in parts) + 1 if parts[0] else 0

    for _ in range(image_nums):
        ed = ids.index(image_id, st)
        t, h, w = grids[grid_idx][0], grids[grid_idx][1] // merge, grids[grid_idx][2] // merge
        grid_idx += 1
        st_idx, text_len = nxt(), ed - st
        for d in range(3):
            parts[d] += [st_idx + k for k in range(text_len)]
        for ti in range(t):
            for hi in range(h):
                for wi in range(w):
                    for d, v in enumerate((ti, hi, wi)):
                        parts[d].append(v + text_len + st_idx)
        st = ed + t * h * w
    if st < len(ids):
        st_idx = nxt()
        for d in range(3):
            parts[d] += [st_idx + k for k in range(len(ids) - st)]
    return parts


def test_reference_rope_rule_hand_worked():
    """The transcription above on a hand-worked row: 4 image tokens (grid 1x4x4, merged 2x2) then 2 text tokens."""
    img, vs, t = 9, 7, 1
    bare = [img] * 4 + [t, t]
    assert reference_rope_index(bare, [[1, 4, 4]], img, vs) == [[0, 1, 2, 3, 4, 5]] * 3   # bare: all 1D
    wrapped = [vs] + [img] * 4 + [8, t]
    assert reference_rope_index(wrapped, [[1, 4, 4]], img, vs) == [[0, 1, 1, 1, 1, 3, 4],
                                                                   [0, 1, 1, 2, 2, 3, 4],
                                                                   [0, 1, 2, 1, 2, 3, 4]]


@pytest.mark.parametrize("name,size,grid", [
    # VLM2Vec v1: any image -> 1344 x 1344 (src/dataset.py:19-20), smart_resize keeps it (96 x 96 patches of 14 px
    # within max_pixels 12845056) -> 96*96/4 = 2304 tokens.
    ("vlm2vec_qwen2vl_2b", (640, 480), [1, 96, 96]),
    # Gen2Embed "random" (src/dataset.py:58-79): 640x480 untouched -> smart_resize(480, 640) = 476 x 644 -> 34 x 46.
    ("saha_qwen2vl_2b", (640, 480), [1, 34, 46]),
    # 2000x500: aspect 4 > 2 -> h = 2000/2 = 1000; long side 2000 > 992 -> scale 0.496 -> 992 x 496 -> 504 x 980.
    ("saha_qwen2vl_2b", (2000, 500), [1, 36, 70]),
    # 200x100: short side 100 < 336 -> scale 3.36 -> 672 x 336 (multiples of 28) -> 24 x 48.
    ("gen2embed_qwen2vl_2b", (200, 100), [1, 24, 48]),
])
def test_qwen_profiles_image_grid_tokens_positions_and_pooling(compose_cfg, name, size, grid):
    model, prompt = _profile(compose_cfg, name)
    emb = _embedder(model, prompt)
    proc = emb.processor
    image_id, vs_id = proc.image_token_id, proc.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    texts = [ROWS["cls"][0], ROWS["webqa"][0], ROWS["ret"][0]]
    inputs = emb.input_builder(texts, [_img(*size), None, None], "query")
    assert inputs["image_grid_thw"].tolist() == [grid]
    n_tokens = grid[1] * grid[2] // 4
    ids = [_unpadded(inputs, r) for r in range(3)]
    start, length = _image_block(ids[0], image_id)
    assert length == n_tokens
    tok = proc.tokenizer
    if prompt["chat"]:   # Gen2Embed: the image block follows "<|im_start|>user\n" (the tiny tokenizer drops "\n")
        assert ids[0][start - 2:start] == tok.convert_tokens_to_ids(["<|im_start|>", "user"])
    else:                # VLM2Vec: the text starts with the image (Qwen2 adds no BOS)
        assert start == 0
    assert ids[1].count(image_id) == 1   # WebQA query: one stray token, embedded as a token (no image)
    # Positions: the reference rule (bare token -> 1D) vs transformers 5's default (image tokens by id -> 3D)
    ours = emb.family.rope_positions(emb.backbone, inputs)
    for r in range(3):
        mask = inputs["attention_mask"][r].bool()
        expected = reference_rope_index(ids[r], [grid], image_id, vs_id)
        assert ours[:, r, mask].tolist() == expected, r
        assert expected[0] == list(range(len(ids[r])))   # bare layout: 1D everywhere
    by_id = (inputs["input_ids"] == image_id).int() * inputs["image_rows"][:, None].int()
    default, _ = emb.backbone.get_rope_index(input_ids=inputs["input_ids"], mm_token_type_ids=by_id,
                                             image_grid_thw=inputs["image_grid_thw"],
                                             attention_mask=inputs["attention_mask"])
    after_image = int((~inputs["attention_mask"][0].bool()).sum()) + start + length
    # transformers 5 would number the first token after the image max(h, w)/2 past the block start instead of
    # (tokens in the block) past it: the positions the checkpoints were not trained with.
    assert int(default[0, 0, after_image]) == start + max(grid[1], grid[2]) // 2
    assert int(ours[0, 0, after_image]) == start + length
    # Pooling: the last non-padding token (left padding: the last column), the text's last token.
    assert inputs["attention_mask"][:, -1].all()
    if prompt["chat"]:   # "<|im_start|>assistant\n": the pooled token is "\n" with the real tokenizer
        assert ids[0][-2:] == tok.convert_tokens_to_ids(["<|im_start|>", "assistant"])
    else:
        assert ids[0][-1] == tok.convert_tokens_to_ids("classification")


def test_wrapped_layout_gets_3d_positions_like_the_reference(compose_cfg):
    """With <|vision_start|> before the image (Qwen's own chat template) both rules agree: 3D image positions."""
    model, prompt = _profile(compose_cfg, "saha_qwen2vl_2b")
    emb = _embedder(model, {**prompt, "image_layout": "wrapped"}, image={"min_pixels": 3136, "max_pixels": 12544})
    proc = emb.processor
    inputs = emb.input_builder([ROWS["cls"][0], ROWS["ret"][0]], [_img(56, 56), None], "query")
    grid = inputs["image_grid_thw"].tolist()
    assert grid == [[1, 4, 4]]
    ids = _unpadded(inputs, 0)
    vs_id = proc.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    expected = reference_rope_index(ids, grid, proc.image_token_id, vs_id)
    mask = inputs["attention_mask"][0].bool()
    assert emb.family.rope_positions(emb.backbone, inputs)[:, 0, mask].tolist() == expected
    start, _ = _image_block(ids, proc.image_token_id)
    assert [expected[d][start:start + 4] for d in range(3)] == [[start] * 4, [start, start, start + 1, start + 1],
                                                                [start, start + 1, start, start + 1]]


def test_stray_image_token_keeps_its_embedding_and_batch_mates_do_not_matter(compose_cfg):
    """A WebQA query (placeholder, no image) next to an image row: each row embeds as it does alone."""
    model, prompt = _profile(compose_cfg, "vlm2vec_qwen2vl_2b")
    emb = _embedder(model, prompt, image={"min_pixels": 3136, "max_pixels": 12544,
                                          "resize": {"mode": "fixed", "size": [56, 56]}})
    texts, images = [ROWS["cls"][0], ROWS["webqa"][0]], [_img(90, 60), None]
    both = emb.encode(texts, images)
    alone = torch.cat([emb.encode(texts[:1], images[:1]), emb.encode(texts[1:], images[1:])])
    torch.testing.assert_close(both, alone, atol=2e-5, rtol=0)


def test_llave_profile_tokens_and_pooling(compose_cfg):
    model, prompt = _profile(compose_cfg, "llave_0.5b")
    emb = _embedder(model, prompt)
    tok = emb.processor.tokenizer
    image_id = tok.convert_tokens_to_ids("<image>")
    inputs = emb.input_builder([ROWS["grd"][0], ROWS["webqa"][0]], [_img(40, 30), None], "query")
    ids = [_unpadded(inputs, r) for r in range(2)]
    start, length = _image_block(ids[0], image_id)
    assert ids[0][start - 2:start] == tok.convert_tokens_to_ids(["<|im_start|>", "user"])   # "…user\n<image>"
    assert image_id not in ids[1]   # LLaVE leaves a placeholder without an image as text
    # the closing assistant turn: "<|im_start|>assistant\n\n<|im_end|>\n" -> the pooled (last) token is the final
    # "\n" with the real tokenizer (llava_qwen.py:67-73 pools attention_mask.sum(1) - 1), <|im_end|> here
    assert ids[0][-3:] == tok.convert_tokens_to_ids(["<|im_start|>", "assistant", "<|im_end|>"])
    assert inputs["attention_mask"][:, -1].all()


def test_refcoco_matching_candidates_are_encoded_as_queries(compose_cfg):
    """Gen2Embed src/dataset.py:578: 'matching' datasets give their targets the query prompt (Q side)."""
    from datamodules.schema import EvalRow, Item

    model, prompt = _profile(compose_cfg, "gen2embed_qwen2vl_2b")
    emb = _embedder(model, prompt)
    seen = []
    builder = emb.input_builder
    original = type(builder).__call__

    def spy(self, texts, images, side):
        seen.extend((t, side) for t in texts)
        return original(self, texts, images, side)

    type(builder).__call__ = spy
    try:
        rows = [EvalRow("RefCOCO-Matching", 0, Item("the man on the left"), (Item("a dog"), Item("a cat")))]
        other = [EvalRow("N24News", 0, Item("a headline"), (Item("sports"), Item("politics")))]
        # Through the runner, as train.py/evaluate.py score: the sides come from the embedder's prompt.
        score(emb, [EvalDataset("RefCOCO-Matching", "Grounding", "OOD", rows),
                    EvalDataset("N24News", "Classification", "IND", other)], {"progress": False}, "profile")
    finally:
        type(builder).__call__ = original
    sides = dict(seen)
    assert sides["a dog"] == sides["a cat"] == "query" and sides["sports"] == sides["politics"] == "target"


#: The profiles that differ from one of these only by model.path (overridden here) run in the slow suite.
DISTINCT = ("vlm2vec_qwen2vl_2b", "saha_qwen2vl_2b", "llave_0.5b")


@pytest.mark.parametrize("name", [n if n in DISTINCT else pytest.param(n, marks=pytest.mark.slow) for n in PROFILES])
def test_profile_trains_one_step_with_its_tiny_family(compose_cfg, tiny_cfg, tmp_path, name):
    family, _ = PROFILES[name]
    small = ["model.image.max_pixels=12544"] if family == "qwen2_vl" else []   # 112² keeps the tiny vision fast
    cfg = compose_cfg("train", tiny_cfg([f"experiment=published/{name}", "model.path=null", "model.config={}",
                                         "model.dtype=null", *small, "trainer.max_steps=1", "data.batch_size=4",
                                         "data.val_per_subset=0", "trainer.limit_val_batches=0",
                                         "evaluate_before=false", "evaluate_after=false", "save_embedder=false"]))
    assert cfg.prompt.name == PROFILES[name][1]
    train.run(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_reference_mm_token_type_ids_hand_worked():
    """Image slots by the reference rule: image tokens of a row with an image, in a run right after <|vision_start|>."""
    from embedders.backbones.qwen2_vl import reference_mm_token_type_ids

    vs, img, ve, t = 7, 9, 8, 1
    ids = torch.tensor([[vs, img, img, ve, t, img, img],     # wrapped run, then a bare run: only the first counts
                        [img, img, t, vs, img, ve, t],       # bare run first, then a wrapped one
                        [vs, img, ve, t, t, t, t]])          # a row without an image (a stray wrapped token)
    rows = torch.tensor([True, True, False])
    assert reference_mm_token_type_ids(ids, rows, img, vs).tolist() == [[0, 1, 1, 0, 0, 0, 0],
                                                                       [0, 0, 0, 0, 1, 0, 0],
                                                                       [0, 0, 0, 0, 0, 0, 0]]


def test_saved_profile_embedder_formats_and_resizes_the_same(compose_cfg, tmp_path):
    """embedder.json carries the prompt and the image policy: a reloaded Embedder builds identical inputs."""
    model, prompt = _profile(compose_cfg, "saha_qwen2vl_2b")
    emb = _embedder(model, prompt, image={**model["image"], "max_pixels": 12544})
    reloaded = Embedder.from_pretrained(emb.save_pretrained(tmp_path / "emb"))
    assert reloaded.prompt == emb.prompt and reloaded.image == emb.image
    texts, images = [ROWS["grd"][0], ROWS["webqa"][0]], [_img(300, 90), None]
    a, b = emb.input_builder(texts, images, "query"), reloaded.input_builder(texts, images, "query")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)
