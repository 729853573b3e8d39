"""Video and multi-image inputs for the Qwen-VL families (Qwen2-VL / Qwen2.5-VL, Qwen3-VL), with or without
torchvision.

`QwenVideoProcessor` produces the tensors the stock `Qwen2VLVideoProcessor` / `Qwen3VLVideoProcessor` produce —
`pixel_values_videos` [sum of patches, C * temporal_patch * patch * patch] and `video_grid_thw` [videos, 3] —
with PIL and NumPy only (the stock video processors need torchvision, which is unusable on CPU-only machines
here). It takes the stock resize rule (each family's `smart_resize`, imported from transformers, including the
optional per-frame pixel cap), resizes frames with PIL bicubic (as the PIL image processors do; torchvision's
antialiased bicubic differs by a few grey levels), rescales, normalises, pads the frame count to a multiple of
`temporal_patch_size` by repeating the last frame, and patchifies in the stock layout. Attached to a processor
as its `video_processor`, it lets the stock processor expand `<|video_pad|>` (Qwen2-VL: one token per merged
patch; Qwen3-VL: per temporal patch `<t seconds><|vision_start|>...<|vision_end|>`) and mark video tokens in
`mm_token_type_ids` (2) for M-RoPE.

`qwen_processor_inputs` is the family-level `prepare` for texts whose visual input is None, an image, a video
clip (any object with `frames`, `fps`, `indices` — e.g. `datamodules.video.VideoClip`), or a list of those
(several pages per item). Each text must hold exactly one image token per image and one video token per video;
more images than the family's limit are refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import truncate_text_tokens

VIDEO_CONFIG_FILE = "video_preprocessor_config.json"
RULES = ("qwen2_vl", "qwen3_vl")
#: Stock defaults per rule (transformers' Qwen2VLVideoProcessor / Qwen3VLVideoProcessor class attributes).
STOCK = {
    "qwen2_vl": dict(patch_size=14, min_pixels=128 * 28 * 28, max_pixels=28 * 28 * 768, max_video_tokens=128000,
                     image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711),
                     processor_class="Qwen2VLVideoProcessor"),
    "qwen3_vl": dict(patch_size=16, min_pixels=128 * 32 * 32, max_pixels=32 * 32 * 768, max_video_tokens=768,
                     image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), processor_class="Qwen3VLVideoProcessor"),
}
#: Frame rate assumed for frames without a known source rate (frame folders), as qwen-vl-utils does for
#: frame lists (`sample_fps` 2.0, frame positions as indices): it only sets Qwen3-VL's timestamps.
DEFAULT_FRAMES_FPS = 2.0
#: "processor": the stock video processor's resize rule. "qwen_vl_utils": the rule of qwen-vl-utils' `fetch_video`
#: for frame lists, which Qwen3-VL-Embedding applies before calling the processor with do_resize=False: each frame
#: is first rounded to multiples of the patch factor (`fetch_image`), then sized within a per-frame budget
#: max(min(768 tokens, total_pixels / frames * 2), 1.05 * min_pixels), min_pixels per frame.
SIZINGS = ("processor", "qwen_vl_utils")
CONFIG_KEYS = {"min_pixels", "max_pixels", "cap_pixels_per_frame", "max_video_tokens", "frames_fps", "sizing",
               "total_pixels"}


def patchify(video: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int):
    """(T, C, H, W) -> (grid_t * grid_h * grid_w, C * temporal * patch * patch) in the stock processors' order
    (merge windows contiguous), after padding T to a multiple of `temporal_patch_size` with the last frame."""
    if pad := -video.shape[0] % temporal_patch_size:
        video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
    t, c, h, w = video.shape
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    x = video.reshape(gt, temporal_patch_size, c, gh // merge_size, merge_size, patch_size, gw // merge_size,
                      merge_size, patch_size)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)   # t, h-blocks, w-blocks, h-in-block, w-in-block, C, tp, ph, pw
    return x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size), (gt, gh, gw)


class QwenVideoProcessor:
    """PIL/NumPy video processor with the stock Qwen2-VL (`rule="qwen2_vl"`) or Qwen3-VL resize rule."""

    model_input_names = ["pixel_values_videos", "video_grid_thw"]

    def __init__(self, rule: str, patch_size: int | None = None, temporal_patch_size: int = 2, merge_size: int = 2,
                 min_pixels: int | None = None, max_pixels: int | None = None, image_mean=None, image_std=None,
                 cap_pixels_per_frame: bool = False, max_video_tokens: int | None = None,
                 frames_fps: float = DEFAULT_FRAMES_FPS, sizing: str = "processor", total_pixels: int | None = None):
        if rule not in RULES:
            raise ValueError(f"unknown video resize rule {rule!r}; choose one of {RULES}")
        if sizing not in SIZINGS:
            raise ValueError(f"model.image.video.sizing must be one of {SIZINGS}, got {sizing!r}")
        stock = STOCK[rule]
        self.rule = rule
        self.patch_size = int(patch_size or stock["patch_size"])
        self.temporal_patch_size = int(temporal_patch_size)
        self.merge_size = int(merge_size)
        self.min_pixels = int(min_pixels if min_pixels is not None else stock["min_pixels"])
        self.max_pixels = int(max_pixels if max_pixels is not None else stock["max_pixels"])
        self.image_mean = tuple(float(x) for x in (image_mean if image_mean is not None else stock["image_mean"]))
        self.image_std = tuple(float(x) for x in (image_std if image_std is not None else stock["image_std"]))
        self.cap_pixels_per_frame = bool(cap_pixels_per_frame)
        self.max_video_tokens = int(max_video_tokens if max_video_tokens is not None else stock["max_video_tokens"])
        self.frames_fps = float(frames_fps)
        self.sizing = sizing
        # qwen-vl-utils' default total budget: its MODEL_SEQ_LEN (128000) tokens' worth of pixels, x 0.9
        self.total_pixels = int(total_pixels if total_pixels is not None else 128000 * self.factor ** 2 * 0.9)
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"video min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_image_processor(cls, rule: str, image_processor, overrides: dict | None = None) -> QwenVideoProcessor:
        """Patch geometry, normalisation and pixel budget of the family's image processor (what the old Qwen2-VL
        image processor, and so the VLM2Vec reference, applied to video frames), unless `overrides`
        (model.image.video) say otherwise."""
        size = image_processor.size
        kwargs = dict(patch_size=image_processor.patch_size, temporal_patch_size=image_processor.temporal_patch_size,
                      merge_size=image_processor.merge_size, image_mean=image_processor.image_mean,
                      image_std=image_processor.image_std, min_pixels=size["shortest_edge"],
                      max_pixels=size["longest_edge"])
        kwargs.update(_checked(overrides))
        return cls(rule, **kwargs)

    @classmethod
    def from_pretrained(cls, rule: str, path: str, image_processor, overrides: dict | None = None) -> QwenVideoProcessor:
        """From the checkpoint's `video_preprocessor_config.json` when it has one (a hub id or a directory), else
        from its image processor (transformers' own fallback for checkpoints without a video config)."""
        spec = _read_video_config(path)
        if spec is None:
            return cls.from_image_processor(rule, image_processor, overrides)
        size = spec.get("size") or {}
        kwargs = dict(
            patch_size=spec.get("patch_size"), temporal_patch_size=spec.get("temporal_patch_size", 2),
            merge_size=spec.get("merge_size", 2), image_mean=spec.get("image_mean"), image_std=spec.get("image_std"),
            min_pixels=spec.get("min_pixels", size.get("shortest_edge")),
            max_pixels=spec.get("max_pixels", size.get("longest_edge")),
            cap_pixels_per_frame=bool(spec.get("cap_pixels_per_frame") or False),
            max_video_tokens=spec.get("max_video_tokens"), frames_fps=spec.get("embedlab_frames_fps", DEFAULT_FRAMES_FPS),
            sizing=spec.get("embedlab_sizing", "processor"), total_pixels=spec.get("embedlab_total_pixels"),
        )
        kwargs.update(_checked(overrides))
        return cls(rule, **kwargs)

    def to_dict(self) -> dict:
        """The stock video processor's config format (so AutoVideoProcessor reloads it where torchvision works)."""
        return {
            "video_processor_type": STOCK[self.rule]["processor_class"],
            "size": {"shortest_edge": self.min_pixels, "longest_edge": self.max_pixels},
            "patch_size": self.patch_size, "temporal_patch_size": self.temporal_patch_size,
            "merge_size": self.merge_size, "image_mean": list(self.image_mean), "image_std": list(self.image_std),
            "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "do_convert_rgb": True, "resample": int(Image.Resampling.BICUBIC), "do_sample_frames": False,
            "cap_pixels_per_frame": self.cap_pixels_per_frame, "max_video_tokens": self.max_video_tokens,
            "embedlab_frames_fps": self.frames_fps, "embedlab_sizing": self.sizing,
            "embedlab_total_pixels": self.total_pixels,
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory) / VIDEO_CONFIG_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ sizes
    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def target_size(self, num_frames: int, height: int, width: int) -> tuple[int, int]:
        """(height, width) every frame is resized to: the stock processor's rule for this family."""
        factor, lo, hi = self.factor, self.min_pixels, self.max_pixels
        if self.sizing == "qwen_vl_utils":
            # fetch_image (image defaults: 4 to 16384 tokens) rounds each frame (idempotent once rounded), then
            # fetch_video sizes the clip.
            height, width = _vlu_smart_resize(height, width, factor, 4 * factor ** 2, 16384 * factor ** 2)
            frames = num_frames + num_frames % 2   # fetch_video pads a frame list to an even count
            budget = max(min(hi, self.total_pixels / frames * 2), int(lo * 1.05))
            return _vlu_smart_resize(height, width, factor, lo, budget)
        if self.rule == "qwen2_vl":
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

            if self.cap_pixels_per_frame:
                total = int(self.max_video_tokens * factor * factor * 0.9)
                hi = max(min(hi, total * self.temporal_patch_size // num_frames), int(lo * 1.05))
            return smart_resize(height, width, factor=factor, min_pixels=lo, max_pixels=hi)
        from transformers.models.qwen3_vl.video_processing_qwen3_vl import smart_resize

        # The stock rule refuses fewer frames than one temporal patch; such a clip is padded to one patch anyway.
        num_frames = max(num_frames, self.temporal_patch_size)
        if self.cap_pixels_per_frame:
            per_frame = max(min(self.max_video_tokens * factor * factor, hi // num_frames), int(lo * 1.05))
            hi = per_frame * num_frames
        return smart_resize(num_frames, height, width, temporal_factor=self.temporal_patch_size, factor=factor,
                            min_pixels=lo, max_pixels=hi)

    # ------------------------------------------------------------------ processing
    def _frames_tensor(self, frames: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        h, w = size
        mean = np.asarray(self.image_mean, dtype=np.float32)
        std = np.asarray(self.image_std, dtype=np.float32)
        out = []
        for frame in frames:
            frame = frame.convert("RGB")
            if frame.size != (w, h):
                frame = frame.resize((w, h), resample=Image.Resampling.BICUBIC)
            x = (np.asarray(frame, dtype=np.float64) * (1 / 255)).astype(np.float32)
            out.append(((x - mean) / std).transpose(2, 0, 1))
        return torch.from_numpy(np.stack(out))

    def __call__(self, videos, video_metadata=None, return_metadata: bool = False, return_tensors=None, **kwargs):
        from transformers.feature_extraction_utils import BatchFeature

        unsupported = {k: v for k, v in kwargs.items() if v not in (None, False) and k not in _IGNORED_KWARGS}
        if unsupported:
            raise ValueError(f"QwenVideoProcessor does not implement {sorted(unsupported)}; videos arrive with their "
                             "frames already sampled (datamodules.video) and are sized by model.image.video")
        videos = [list(v) for v in videos]
        patches, grids = [], []
        for i, frames in enumerate(videos):
            if not frames:
                raise ValueError(f"video {i} has no frames")
            sizes = {f.size for f in frames}
            if len(sizes) > 1:
                raise ValueError(f"video {i} mixes frame sizes {sorted(sizes)}; all frames of a video must share one size")
            width, height = frames[0].size
            if self.sizing == "qwen_vl_utils":
                # qwen-vl-utils resizes each frame to factor multiples first (fetch_image), then the whole clip.
                height, width = _vlu_smart_resize(height, width, self.factor, 4 * self.factor ** 2,
                                                  16384 * self.factor ** 2)
                frames = [f if f.size == (width, height) else f.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
                          for f in frames]
            pixels, grid = patchify(self._frames_tensor(frames, self.target_size(len(frames), height, width)),
                                    self.patch_size, self.merge_size, self.temporal_patch_size)
            patches.append(pixels)
            grids.append(grid)
        data = {"pixel_values_videos": torch.cat(patches), "video_grid_thw": torch.tensor(grids, dtype=torch.long)}
        if return_metadata:
            data["video_metadata"] = _metadata(videos, video_metadata, self.frames_fps,
                                               frame_lists=self.sizing == "qwen_vl_utils")
        return BatchFeature(data=data, tensor_type=None, skip_tensor_conversion=["video_metadata"])


def _vlu_smart_resize(height: int, width: int, factor: int, min_pixels: float, max_pixels: float) -> tuple[int, int]:
    """qwen-vl-utils' `smart_resize` (vision_process.py), which differs from transformers' in its first rounding."""
    import math

    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


#: Keys the stock processor call may forward that do not change what this processor computes.
_IGNORED_KWARGS = {"do_sample_frames", "device", "input_data_format", "data_format", "do_convert_rgb"}


def _checked(overrides: dict | None) -> dict:
    overrides = dict(overrides or {})
    unknown = set(overrides) - CONFIG_KEYS
    if unknown:
        raise ValueError(f"model.image.video has unknown key(s) {sorted(unknown)}; known: {sorted(CONFIG_KEYS)}")
    return {k: v for k, v in overrides.items() if v is not None}


def _read_video_config(path: str) -> dict | None:
    local = Path(path) / VIDEO_CONFIG_FILE
    if local.is_file():
        return json.loads(local.read_text())
    if Path(path).is_dir():
        return None
    from transformers.utils import cached_file

    found = cached_file(path, VIDEO_CONFIG_FILE, _raise_exceptions_for_missing_entries=False)
    return json.loads(Path(found).read_text()) if found else None


def frame_list_metadata(num_frames: int, frames_fps: float):
    """qwen-vl-utils `fetch_video` for a frame list (vision_process.py:430-446, QwenLM/Qwen3-VL 9658872): the list
    padded to an even count with its last frame, `fps` = `sample_fps` (2.0), frame indices 0..n-1 of the padded
    list. Qwen3-VL-Embedding passes every MMEB-V2 video as a frame list, so its timestamps come from this."""
    from transformers.video_utils import VideoMetadata

    n = num_frames + num_frames % 2
    return VideoMetadata(total_num_frames=n, fps=frames_fps, frames_indices=list(range(n)))


def _metadata(videos, video_metadata, frames_fps: float, frame_lists: bool = False):
    """Per video: the given metadata, or (no source rate, or `frame_lists`: qwen-vl-utils sizing) the frame-list
    metadata."""
    from transformers.video_utils import VideoMetadata

    if video_metadata is None:
        video_metadata = [None] * len(videos)
    if len(video_metadata) != len(videos):
        raise ValueError(f"{len(video_metadata)} video metadata for {len(videos)} videos")
    out = []
    for frames, meta in zip(videos, video_metadata):
        if frame_lists:
            meta = frame_list_metadata(len(frames), frames_fps)
        elif meta is None or getattr(meta, "fps", None) is None:
            # No source rate (frame folders): frame positions at `frames_fps`, as qwen-vl-utils does for frame lists.
            meta = VideoMetadata(total_num_frames=len(frames), fps=frames_fps, frames_indices=list(range(len(frames))))
        out.append(meta)
    return out


# ---------------------------------------------------------------------------------------------- family prepare
def is_video(obj: Any) -> bool:
    """A video clip: an object with a sequence of PIL `frames` (duck-typed, so models need not import datamodules)."""
    return hasattr(obj, "frames") and not isinstance(obj, Image.Image)


def split_visuals(visual) -> tuple[list[Image.Image], list[Any]]:
    """One row's visual input -> (images, videos) in order."""
    if visual is None:
        return [], []
    items = list(visual) if isinstance(visual, (list, tuple)) else [visual]
    images, videos = [], []
    for item in items:
        if is_video(item):
            videos.append(item)
        elif isinstance(item, Image.Image):
            images.append(item)
        else:
            raise TypeError(f"a visual input must be a PIL image or a video clip (with .frames), got {type(item).__name__}")
    return images, videos


def video_metadata(clip):
    """The stock processors' metadata for a clip: source rate and frame indices (None when the rate is unknown)."""
    from transformers.video_utils import VideoMetadata

    fps = getattr(clip, "fps", None)
    if fps is None:
        return None
    frames = list(clip.frames)
    indices = list(getattr(clip, "indices", range(len(frames))))
    total = int(getattr(clip, "total_frames", 0) or (max(indices) + 1))
    width, height = frames[0].size
    return VideoMetadata(total_num_frames=total, fps=float(fps), frames_indices=indices, width=width, height=height)


def has_video_or_pages(visuals: Sequence[Any] | None) -> bool:
    """Whether any row carries a video clip or a list of images (else the plain one-image-per-row path applies)."""
    return any(is_video(v) or isinstance(v, (list, tuple)) for v in (visuals or ()))


def qwen_processor_inputs(processor, texts: Sequence[str], visuals: Sequence[Any], max_images: int,
                          max_length: int | None = None) -> dict:
    """Call a Qwen-VL processor on formatted texts with per-row images, multi-image lists and video clips. A row
    longer than `max_length` tokens loses text tokens only (`_truncate_text`)."""
    visuals = list(visuals) if visuals is not None else [None] * len(texts)
    if len(visuals) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(visuals)} visual inputs")
    image_token, video_token = processor.image_token, processor.video_token
    images, videos = [], []
    for row, (text, visual) in enumerate(zip(texts, visuals)):
        row_images, row_videos = split_visuals(visual)
        if len(row_images) > max_images:
            raise ValueError(f"row {row} has {len(row_images)} images; this family takes at most {max_images} per "
                             "item (its max_images_per_item); split the document or keep fewer pages")
        for kind, token, given in (("image", image_token, row_images), ("video", video_token, row_videos)):
            if text.count(token) != len(given):
                raise ValueError(f"row {row}: the text holds {text.count(token)} {token} token(s) for {len(given)} "
                                 f"{kind}(s); every {kind} needs exactly one placeholder: {text[:120]!r}")
        for clip in row_videos:
            sizes = {f.size for f in clip.frames}
            if len(sizes) != 1:
                raise ValueError(f"row {row}: a video " + ("has no frames" if not sizes else
                                 f"mixes frame sizes {sorted(sizes)}; all frames of a video must share one size"))
        images += row_images
        videos += row_videos
    kwargs = dict(text=list(texts), padding=True, return_tensors="pt")
    if images:
        kwargs["images"] = images
    if videos:
        if getattr(processor, "video_processor", None) is None:
            raise ValueError("videos were given, but this processor has no video processor; build it with the "
                             "family's load_processor (which attaches one)")
        frames = [list(v.frames) for v in videos]
        fps = getattr(processor.video_processor, "frames_fps", DEFAULT_FRAMES_FPS)
        kwargs["videos"] = frames
        if getattr(processor.video_processor, "sizing", None) == "qwen_vl_utils":   # every video as a frame list
            kwargs["video_metadata"] = [frame_list_metadata(len(f), fps) for f in frames]
        else:
            kwargs["video_metadata"] = [video_metadata(v) or _metadata([f], None, fps)[0]
                                        for v, f in zip(videos, frames)]
        kwargs["do_sample_frames"] = False  # frames arrive sampled (datamodules.video)
    out = dict(processor(**kwargs))
    image_counts = [len(split_visuals(v)[0]) for v in visuals]
    if any(n > 1 for n in image_counts) and "mm_token_type_ids" in out:
        # transformers assigns M-RoPE positions per run of image tokens: two pages whose tokens touch (nothing
        # but whitespace between their placeholders) would read as one image and shift every later position.
        for row, n in enumerate(image_counts):
            is_image = (out["mm_token_type_ids"][row] == 1).int()
            runs = int(is_image[0]) + int(((is_image[1:] - is_image[:-1]) == 1).sum())
            if n > 1 and runs != n:
                raise ValueError(f"row {row}: the placeholders of its {n} images touch ({runs} image token run(s)); "
                                 "separate them by text, e.g. the wrapped <|vision_start|>...<|vision_end|> form")
    if max_length is not None and int(out["attention_mask"].sum(dim=1).max()) > max_length:
        out = _truncate_text(processor, out, int(max_length))
    return out


def _truncate_text(processor, out: dict, max_length: int) -> dict:
    """Rows longer than `max_length` lose text tokens only (`base.truncate_text_tokens`, on the tokenizer's
    truncation side): image/video slots and their `<|vision_start|>`/`<|vision_end|>` brackets stay, so every
    visual keeps its features and M-RoPE grouping; a row whose visual tokens alone exceed `max_length` is refused
    by name. Rows are padded again and `mm_token_type_ids` rebuilt (Qwen3-VL-Embedding truncates at 8192)."""
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids
    keep = {int(processor.image_token_id), int(processor.video_token_id), ids("<|vision_start|>"), ids("<|vision_end|>")}
    side = getattr(tokenizer, "truncation_side", "right")
    rows = []
    for row, (input_ids, mask) in enumerate(zip(out["input_ids"], out["attention_mask"])):
        try:
            rows.append(truncate_text_tokens(input_ids[mask.bool()].tolist(), max_length, keep, side, row=row))
        except ValueError as err:
            raise ValueError(f"{err}; or lower the video resolution (model.image.video.max_pixels) or the number of "
                             "frames or pages") from None
    batch = dict(tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt"))
    out = {**out, "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if "mm_token_type_ids" in out:
        out["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(batch["input_ids"].tolist()))
    return out


def with_video(processor, rule: str, path: str | None, overrides: dict | None = None) -> Any:
    """Give an image-only Qwen processor a `QwenVideoProcessor` (the stock `__call__` then routes `videos` to it):
    from the checkpoint's video config when `path` has one, else from its image processor. A processor that
    already has a (stock, torchvision) video processor keeps it; `overrides` then set its pixel budget."""
    stock = getattr(processor, "video_processor", None)
    if stock is not None:
        overrides = _checked(overrides)
        if "min_pixels" in overrides or "max_pixels" in overrides:
            stock.size = {"shortest_edge": overrides.get("min_pixels", stock.size["shortest_edge"]),
                          "longest_edge": overrides.get("max_pixels", stock.size["longest_edge"])}
        for key in ("cap_pixels_per_frame", "max_video_tokens"):
            if key in overrides:
                setattr(stock, key, overrides[key])
        return processor
    image_processor = processor.image_processor
    processor.video_processor = (QwenVideoProcessor.from_pretrained(rule, path, image_processor, overrides)
                                 if path is not None else
                                 QwenVideoProcessor.from_image_processor(rule, image_processor, overrides))
    return processor


def save_video_processor(processor, directory: str | Path) -> None:
    """Write the video processor's config next to the image processor's, so a reload rebuilds the same one."""
    video = getattr(processor, "video_processor", None)
    if video is not None:
        video.save_pretrained(str(directory))
