"""Video and multi-image inputs of the Qwen families without torchvision (embedders/backbones/qwen_video.py).

The PIL video processor is checked against the stock video processors' own code: their resize arithmetic and
patch layout are executed from transformers' source (the Qwen2-VL module cannot be imported without
torchvision), and a still video must give exactly the pixels of the real PIL image processor. Then the families
take videos, several pages and mixed batches through the real processors and tiny models."""

from __future__ import annotations

import ast
import math
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from PIL import Image
from transformers.image_utils import SizeDict

from datamodules.video import VideoClip
from embedders import Embedder
from embedders.backbones.qwen_video import QwenVideoProcessor, patchify, qwen_processor_inputs

MODELS = Path(transformers.__file__).parent / "models"


# ----------------------------------------------------------------------------------------------- stock source
def _stock(module: str, cls: str):
    """The stock video processor's `resize` arithmetic run from its source, with the final pixel resize replaced by
    returning the target (height, width); plus its `smart_resize` and `patchify`."""
    tree = ast.parse((MODELS / module).read_text())
    smart = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize")
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    methods = {n.name: n for n in body if isinstance(n, ast.FunctionDef)}

    class _Base:
        def resize(self, image, size, resample):
            return size.height, size.width

    ns = {"math": math, "torch": torch, "SizeDict": SizeDict, "_Base": _Base}
    exec(ast.unparse(smart), ns)  # noqa: S102 - transformers' own source, parsed from the installed package
    src = "class Stock(_Base):\n" + textwrap.indent(ast.unparse(methods["resize"]) + "\n" +
                                                    ast.unparse(methods["patchify"]), "    ")
    exec(src, ns)  # noqa: S102
    return ns["Stock"], ns["smart_resize"]


STOCK2, SMART2 = _stock("qwen2_vl/video_processing_qwen2_vl.py", "Qwen2VLVideoProcessor")
STOCK3, SMART3 = _stock("qwen3_vl/video_processing_qwen3_vl.py", "Qwen3VLVideoProcessor")


def _stock_size(stock_cls, n, h, w, lo, hi, factor, cap=False, max_video_tokens=None):
    stock = stock_cls()
    stock.max_video_tokens = max_video_tokens
    return stock.resize(videos=torch.empty(1, n, 3, h, w), size=SizeDict(shortest_edge=lo, longest_edge=hi),
                        resample=None, factor=factor, temporal_factor=2, cap_pixels_per_frame=cap)


@pytest.mark.parametrize("rule,stock_cls,patch", [("qwen2_vl", STOCK2, 14), ("qwen3_vl", STOCK3, 16)])
@pytest.mark.parametrize("n,h,w,lo,hi,cap", [
    (8, 240, 320, 3136, 50176, False),      # shrink
    (4, 30, 500, 3136, 200704, False),      # thin and wide
    (8, 24, 32, 100_000, 5_000_000, False),  # grow to the minimum
    (7, 480, 640, 4096, 1_000_000, False),  # odd frame count
    (16, 720, 1280, 131072, 25165824, True),  # the per-frame cap decides
    (64, 360, 640, 65536, 786432, True),
    (256, 720, 1280, 3136, 25165824, True),  # Qwen2-VL's total budget binds only for long clips
])
def test_resize_rule_equals_the_stock_video_processors(rule, stock_cls, patch, n, h, w, lo, hi, cap):
    factor = patch * 2
    tokens = 128000 if rule == "qwen2_vl" else 768
    ours = QwenVideoProcessor(rule, patch_size=patch, min_pixels=lo, max_pixels=hi, cap_pixels_per_frame=cap,
                              max_video_tokens=tokens).target_size(n, h, w)
    assert ours == _stock_size(stock_cls, n, h, w, lo, hi, factor, cap, tokens)
    assert ours[0] % factor == 0 and ours[1] % factor == 0


def test_stock_sources_agree_with_what_we_import():
    """Our Qwen2 rule imports the PIL image module's smart_resize: the video module's copy must be the same code,
    and both stock processors must share one patch layout (the one `patchify` reproduces)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as image_smart

    for args in [(240, 320, 28, 3136, 50176), (13, 700, 28, 3136, 1_000_000), (1000, 1000, 28, 56 * 56, 28 * 28 * 1280)]:
        assert SMART2(*args) == image_smart(*args)
    tree2 = ast.parse((MODELS / "qwen2_vl/video_processing_qwen2_vl.py").read_text())
    tree3 = ast.parse((MODELS / "qwen3_vl/video_processing_qwen3_vl.py").read_text())

    def method(tree, cls, name):
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
        return ast.dump(next(n for n in body if isinstance(n, ast.FunctionDef) and n.name == name))

    assert method(tree2, "Qwen2VLVideoProcessor", "patchify") == method(tree3, "Qwen3VLVideoProcessor", "patchify")


@pytest.mark.parametrize("t,patch", [(4, 16), (3, 16), (1, 14), (6, 14)])
def test_patchify_equals_the_stock_layout(t, patch):
    g = torch.Generator().manual_seed(t)
    video = torch.randn(t, 3, patch * 4, patch * 6, generator=g)
    ours, grid = patchify(video, patch, 2, 2)
    stock, *stock_grid = STOCK3().patchify(video[None], patch, 2, 2)
    assert torch.equal(ours, stock[0]) and tuple(grid) == tuple(stock_grid)
    assert grid == (math.ceil(t / 2), 4, 6)


def test_grid_matches_the_importable_qwen3_processor():
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    stock = Qwen3VLVideoProcessor(size={"shortest_edge": 4096, "longest_edge": 2_000_000})
    ours = QwenVideoProcessor("qwen3_vl", min_pixels=4096, max_pixels=2_000_000)
    frames = [Image.new("RGB", (200, 150), "red")] * 6
    out = ours(videos=[frames])
    assert int(out["video_grid_thw"].prod()) == stock.get_num_of_video_patches(6, 150, 200, {})
    assert out["pixel_values_videos"].shape == (int(out["video_grid_thw"].prod()), 3 * 2 * 16 * 16)


@pytest.mark.parametrize("rule,patch,mean", [("qwen2_vl", 14, None), ("qwen3_vl", 16, [0.5, 0.5, 0.5])])
def test_a_still_video_has_the_image_processors_pixels(rule, patch, mean):
    """Two identical frames form one temporal patch: the real PIL image processor repeats a single image the same
    way, so resize, rescale, normalisation and patch order must give the very same tensor."""
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(0, 255, (70, 110, 3), dtype=np.uint8))
    kwargs = {} if mean is None else {"image_mean": mean, "image_std": mean}
    image_proc = Qwen2VLImageProcessorPil(patch_size=patch, min_pixels=4096, max_pixels=20_000, **kwargs)
    # The Qwen3-VL rule budgets pixels over all frames: two frames get twice the image budget.
    scale = 2 if rule == "qwen3_vl" else 1
    video_proc = QwenVideoProcessor.from_image_processor(rule, image_proc,
                                                         {"min_pixels": 4096 * scale, "max_pixels": 20_000 * scale})
    video = video_proc(videos=[[frame, frame]])
    image = image_proc(images=[frame], return_tensors="pt")
    assert video["video_grid_thw"].tolist() == image["image_grid_thw"].tolist()
    assert torch.allclose(video["pixel_values_videos"], image["pixel_values"], atol=1e-6)


def test_qwen_vl_utils_sizing_hand_worked():
    vp = QwenVideoProcessor("qwen3_vl", sizing="qwen_vl_utils", min_pixels=131072, max_pixels=786432,
                            total_pixels=7864320)
    # 64 frames of 240x320: fetch_image rounds to 256x320 (round(7.5) = 8 tiles of 32); per-frame budget
    # max(min(786432, 7864320 / 64 * 2), 1.05 * 131072) = 245760; 81920 < 131072 -> beta = sqrt(1.6),
    # ceil(256 * 1.2649 / 32) = 11, ceil(320 * 1.2649 / 32) = 13 -> 352 x 416.
    assert vp.target_size(64, 240, 320) == (352, 416)
    # 8 frames of 720x1280: rounded 704x1280 (round(22.5) = 22); budget min(786432, 1966080) = 786432;
    # beta = sqrt(901120 / 786432): floor(704 / 1.0704 / 32) = 20, floor(1280 / 1.0704 / 32) = 37 -> 640 x 1184.
    assert vp.target_size(8, 720, 1280) == (640, 1184)


# ----------------------------------------------------------------------------------------------- families
def _frames(n, size=(48, 40), seed=0):
    rng = np.random.default_rng(seed)
    return tuple(Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n))


def _clip(n=4, fps=10.0, seed=0, size=(48, 40)):
    frames = _frames(n, size, seed)
    return VideoClip(frames, tuple(range(0, 10 * n, 10)), fps, 10 * n, "generated")


@pytest.fixture(scope="module")
def tiny():
    built = {}

    def _get(family):
        if family not in built:
            torch.manual_seed(0)
            image = {"min_pixels": 56 * 56, "max_pixels": 84 * 84} if family == "qwen2_vl" else None
            built[family] = Embedder.build(family, config={}, image=image)
        return built[family]

    return _get


def _texts(family, bare=False):
    # The wrapped layout (the default prompt's); Qwen2-VL's bare layout gets 1D positions by the reference rule.
    if bare:
        image, video = "<|image_pad|>", "<|video_pad|>"
    else:
        image, video = "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
    return [f"{video} a red circle moves", f"{image} a blue square", f"{image} page {image} two pages", "text only"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_video_pages_and_images_in_one_batch(tiny, family):
    emb = tiny(family)
    pages = [_frames(1, (64, 90), 1)[0], _frames(1, (90, 64), 2)[0]]
    visuals = [_clip(), _frames(1, (50, 50), 3)[0], pages, None]
    texts = _texts(family)
    inputs = emb.family.prepare(emb.processor, texts, visuals, 4096)
    assert inputs["video_grid_thw"].shape == (1, 3) and inputs["image_grid_thw"].shape == (3, 3)
    merge = emb.processor.image_processor.merge_size ** 2
    ids, types = inputs["input_ids"], inputs["mm_token_type_ids"]
    video_id = emb.processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    image_id = emb.processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # one token per merged patch, in the row that holds the visual; video tokens typed 2, image tokens 1
    assert int((ids[0] == video_id).sum()) == int(inputs["video_grid_thw"][0].prod()) // merge
    per_image = (inputs["image_grid_thw"].prod(-1) // merge).tolist()
    assert [int((ids[r] == image_id).sum()) for r in (1, 2, 3)] == [per_image[0], per_image[1] + per_image[2], 0]
    assert torch.equal(types == 2, ids == video_id) and torch.equal(types == 1, ids == image_id)
    with torch.no_grad():
        feats = emb.backbone.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                video_grid_thw=inputs["video_grid_thw"], return_dict=True)
    assert sum(int(f.shape[0]) for f in feats.pooler_output) == int((ids == video_id).sum())
    # embeddings: finite, normalised, each row independent of its batch mates
    both = emb(inputs)
    alone = torch.cat([emb(emb.family.prepare(emb.processor, texts[i : i + 1], visuals[i : i + 1], 4096))
                       for i in range(4)])
    assert torch.isfinite(both).all() and torch.allclose(both.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(both, alone, atol=1e-4)
    assert torch.cdist(both, both).fill_diagonal_(1.0).min() > 1e-4
    if family == "qwen2_vl":
        # Bare tokens (VLM2Vec's layout) are visual slots by id for transformers but not by the reference rule
        # (only runs right after <|vision_start|>): their rows keep 1D positions, as the reference checkpoints had.
        bare = emb.family.prepare(emb.processor, _texts(family, bare=True), visuals, 4096)
        assert not bool((bare["mm_token_type_ids"] > 0).any())
        assert torch.isfinite(emb(bare)).all()


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_video_backward_reaches_the_vision_tower(family):
    torch.manual_seed(0)
    emb = Embedder.build(family, config={}, image={"min_pixels": 56 * 56, "max_pixels": 84 * 84}
                         if family == "qwen2_vl" else None)
    emb.train()
    texts = _texts(family)[:1]
    emb(emb.family.prepare(emb.processor, texts, [_clip()], 4096)).pow(2).sum().backward()
    grads = [p.grad for n, p in emb.backbone.named_parameters() if n.startswith("visual.")]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_qwen3_video_timestamps_follow_the_clip():
    """Qwen3-VL writes one `<t seconds>` per temporal patch: from the source rate and frame indices of a decoded
    video, and at 2 fps over frame positions for a frame folder (qwen-vl-utils' convention)."""
    torch.manual_seed(0)
    emb = Embedder.build("qwen3_vl", config={})
    proc = emb.processor
    from embedders.backbones.qwen_video import _metadata, video_metadata

    decoded = _clip(4, fps=10.0)                         # frames 0, 10, 20, 30 at 10 fps
    folder = VideoClip(decoded.frames, (0, 1, 2, 3), None, 4, "frames/")
    for clip, expected in ((decoded, ["<0.5 seconds>", "<2.5 seconds>"]),   # (0 + 1) / 2, (2 + 3) / 2 seconds
                           (folder, ["<0.2 seconds>", "<1.2 seconds>"])):   # (0 + 0.5) / 2, (1 + 1.5) / 2 seconds
        meta = video_metadata(clip) or _metadata([list(clip.frames)], None, proc.video_processor.frames_fps)[0]
        out = proc(text=["<|vision_start|><|video_pad|><|vision_end|>"], videos=[list(clip.frames)],
                   video_metadata=[meta], do_sample_frames=False, return_text_replacement_offsets=True)
        replacement = out["text_replacement_offsets"][0][0]["replacement"]
        assert re.findall(r"<[0-9.]+ seconds>", replacement) == expected
        assert replacement.startswith(expected[0] + "<|vision_start|><|video_pad|>")
        assert replacement.count("<|video_pad|>") == int(out["video_grid_thw"][0].prod()) // 4


def test_refusals_name_the_row(tiny):
    emb = tiny("qwen3_vl")
    proc, fam = emb.processor, emb.family
    img = "<|vision_start|><|image_pad|><|vision_end|>"
    pages = list(_frames(3, (64, 64)))
    with pytest.raises(ValueError, match=r"row 1 has 3 images; this family takes at most 2"):
        qwen_processor_inputs(proc, ["a", img * 3], [None, pages], max_images=2)
    for touching in ("<|image_pad|><|image_pad|> two pages", "<|image_pad|>\n<|image_pad|> two pages"):
        with pytest.raises(ValueError, match=r"row 1: the placeholders of its 2 images touch \(1 image token run"):
            fam.prepare(proc, ["a", touching], [None, pages[:2]], 4096)
    with pytest.raises(ValueError, match=r"row 0: the text holds 1 <\|image_pad\|> token\(s\) for 3 image\(s\)"):
        fam.prepare(proc, [img + " x"], [pages], 4096)
    with pytest.raises(ValueError, match=r"row 0: the text holds 0 <\|video_pad\|> token\(s\) for 1 video"):
        fam.prepare(proc, ["no placeholder"], [_clip()], 4096)
    with pytest.raises(ValueError, match=r"batch row 1: its image takes \d+ tokens, more than model.max_length=4"):
        fam.prepare(proc, ["a", "<|vision_start|><|video_pad|><|vision_end|> a red circle"], [None, _clip()], 4)
    mixed = VideoClip(_frames(1, (48, 40)) + _frames(1, (40, 48)), (0, 1), 10.0, 2, "x")
    with pytest.raises(ValueError, match="mixes frame sizes"):
        fam.prepare(proc, ["<|vision_start|><|video_pad|><|vision_end|>"], [mixed], 4096)
    with pytest.raises(TypeError, match="PIL image or a video clip"):
        fam.prepare(proc, [img], ["not an image"], 4096)
    with pytest.raises(ValueError, match="model.image.video has unknown key"):
        Embedder.build("qwen3_vl", config={}, image={"video": {"fps": 3}})


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_long_rows_lose_text_tokens_only(tiny, family):
    """A row longer than max_length is cut on the tokenizer's truncation side, never through its visual tokens:
    the truncated row equals the full row minus its last text tokens, video slots and brackets kept."""
    emb = tiny(family)
    proc, fam = emb.processor, emb.family
    text = "<|vision_start|><|video_pad|><|vision_end|> " + " ".join(["red circle"] * 20)
    full = fam.prepare(proc, [text], [_clip()], 4096)
    n = int(full["attention_mask"].sum())
    cut = fam.prepare(proc, [text, "a"], [_clip(), None], n - 5)
    ids_full = full["input_ids"][0][full["attention_mask"][0].bool()].tolist()
    ids_cut = cut["input_ids"][0][cut["attention_mask"][0].bool()].tolist()
    assert len(ids_cut) == n - 5 and ids_cut == ids_full[: n - 5]
    video = proc.video_token_id
    assert ids_cut.count(video) == ids_full.count(video)
    assert torch.equal(cut["video_grid_thw"], full["video_grid_thw"])
    types = cut["mm_token_type_ids"][0][cut["attention_mask"][0].bool()]
    assert int((types == 2).sum()) == ids_full.count(video)
    emb.eval()
    with torch.no_grad():
        assert torch.isfinite(emb(cut)).all()
