"""Qwen2-VL and Qwen2.5-VL: image + text decoders with the real processor (image-token expansion, `pixel_values`,
`image_grid_thw`), left padding, last-token pooling.

Positions (M-RoPE): an image's tokens get 3D (temporal, height, width) positions only when they follow
`<|vision_start|>` — the rule of the Qwen2-VL code the reference checkpoints were trained and scored with
(VLM2Vec v1 `src/vlm_backbone/qwen2_vl/modeling_qwen2_vl.py:1459-1461`, transformers 4.46); transformers 5 marks
image tokens by id, so a bare `<|image_pad|>` layout (VLM2Vec, Gen2Embed) would get 3D positions the models
never saw. `prepare` writes `mm_token_type_ids` by the reference rule and `encode_inputs` passes the positions
computed from them. In the default `wrapped` layout (`<|vision_start|><|image_pad|><|vision_end|>`, Qwen's own)
both rules give the same positions, so stock loaders reproduce a shipped model exactly; with the bare layout they
do not (`reference_image_positions`; the model card says so, embedders/saving.py). A text-only row may hold
`<|image_pad|>` as an ordinary token (the references' rendering of `<|image_1|>` without an image): it keeps its
token embedding and 1D position.

Images are resized first when `model.image.resize` says so (VLM2Vec v1: 1344 x 1344; Gen2Embed: aspect clamp),
then by the processor within `min_pixels`..`max_pixels`.

Processor paths: the stock `AutoProcessor` where torchvision works (GPU machines), otherwise the
checkpoint's image processor (PIL backend) and tokenizer combined in `ImageOnlyQwen2VLProcessor`,
which needs no video processor (the video processor requires torchvision).
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
from torch import nn
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen2VLProcessor

from ..pooling import pool
from ..tiny import tiny_qwen_tokenizer
from .base import (
    BackboneFamily,
    cast_weights,
    check_resize,
    load_pretrained,
    processor_inputs,
    processor_source,
    register_family,
    resize_image,
    torchvision_usable,
)
from .qwen_video import has_video_or_pages, is_video, qwen_processor_inputs, save_video_processor, with_video

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")
#: Processor outputs that carry visual features (values, grids), in pairs.
VISUAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


def _resize_visual(visual, policy):
    """`model.image.resize` applied to an image or to each page of a page list (video frames keep their size:
    the video processor sizes them)."""
    if isinstance(visual, (list, tuple)):
        return [resize_image(v, policy) if not is_video(v) else v for v in visual]
    return visual if is_video(visual) else resize_image(visual, policy)


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor (its attributes follow this signature)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


IMAGE_KEYS = ("min_pixels", "max_pixels", "resize")


def _image_processor_kwargs(image: dict | None) -> dict:
    image = dict(image or {})
    kwargs = {}
    if image.get("min_pixels") is not None:
        kwargs["min_pixels"] = int(image["min_pixels"])
    if image.get("max_pixels") is not None:
        kwargs["max_pixels"] = int(image["max_pixels"])
    unknown = set(image) - set(IMAGE_KEYS)
    if unknown:
        raise ValueError(f"model.image has unknown key(s) {sorted(unknown)} for Qwen2-VL; known: {', '.join(IMAGE_KEYS)}")
    return kwargs


def _wrapped_runs(input_ids: torch.Tensor, token_id: int, vision_start_id: int) -> torch.Tensor:
    """True at `token_id` tokens in a run of them that directly follows `<|vision_start|>`."""
    is_tok = input_ids == token_id
    prev = torch.nn.functional.pad(input_ids[:, :-1], (1, 0), value=-1)
    prev_tok = torch.nn.functional.pad(is_tok[:, :-1], (1, 0), value=False)
    run_start = is_tok & ~prev_tok
    wrapped_start = run_start & (prev == vision_start_id)
    # Index of the latest run start at or before each position (forward fill), then that start's flag.
    idx = torch.where(run_start, torch.arange(input_ids.shape[1]).expand_as(input_ids), torch.zeros_like(input_ids))
    last_start = idx.cummax(dim=1).values
    return is_tok & wrapped_start.gather(1, last_start)


def reference_mm_token_type_ids(input_ids: torch.Tensor, image_rows: torch.Tensor, image_token_id: int,
                                vision_start_id: int, video_token_id: int | None = None) -> torch.Tensor:
    """1 (image) or 2 (video) where a token is a visual slot by the reference rule — an image/video token of a row
    that has a visual input, in a run of such tokens that directly follows `<|vision_start|>` — else 0. Videos follow
    the image rule (VLM2Vec-V2's Qwen2-VL code types both by the token after `<|vision_start|>`)."""
    types = _wrapped_runs(input_ids, image_token_id, vision_start_id).to(torch.int32)
    if video_token_id is not None:
        types = types + 2 * _wrapped_runs(input_ids, video_token_id, vision_start_id).to(torch.int32)
    return types * image_rows[:, None].to(torch.int32)


def tiny_qwen2vl_config(tokenizer, text: dict | None = None, vision: dict | None = None):
    """A Qwen2-VL config of the real architecture at toy size, wired to `tokenizer`'s ids."""
    from transformers import Qwen2VLConfig

    text_cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024)
    text_cfg.update(text or {})
    if "rope_scaling" not in text_cfg:
        # M-RoPE splits half the head dim into (temporal, height, width) sections, 1/4 : 3/8 : 3/8 as in Qwen.
        half = text_cfg["hidden_size"] // text_cfg["num_attention_heads"] // 2
        t = half // 4
        h = (half - t) // 2
        text_cfg["rope_scaling"] = {"type": "mrope", "mrope_section": [t, h, half - t - h]}
    vision_cfg = dict(depth=2, embed_dim=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3)
    vision_cfg.update(vision or {})
    vision_cfg["hidden_size"] = text_cfg["hidden_size"]  # the merger projects into the text width
    text_cfg.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    return Qwen2VLConfig(text_config=text_cfg, vision_config=vision_cfg, **qwen_vision_token_ids(tokenizer),
                         tie_word_embeddings=False)


def qwen_vision_token_ids(tokenizer) -> dict[str, int]:
    """The image, video and vision-span token ids of a Qwen-VL config (Qwen2-VL and Qwen3-VL alike), as
    `tokenizer` numbers them."""
    ids = tokenizer.convert_tokens_to_ids
    return {"image_token_id": ids("<|image_pad|>"), "video_token_id": ids("<|video_pad|>"),
            "vision_start_token_id": ids("<|vision_start|>"), "vision_end_token_id": ids("<|vision_end|>")}


def rope_positions(get_rope_index, inputs) -> torch.Tensor:
    """[3, B, T] M-RoPE positions of `inputs` by the model's `get_rope_index` (3D for the visual tokens that the
    reference-rule `mm_token_type_ids` marks, 1D for everything else)."""
    mask = inputs["attention_mask"]
    types = inputs["mm_token_type_ids"]
    grids = {k: inputs.get(k) for k in ("image_grid_thw", "video_grid_thw")}
    if any(g is not None for g in grids.values()) and bool((types > 0).any()):
        positions, _ = get_rope_index(input_ids=inputs["input_ids"], mm_token_type_ids=types, attention_mask=mask,
                                      **grids)
        return positions
    return (mask.long().cumsum(-1) - 1).clamp_min(0).unsqueeze(0).expand(3, -1, -1)


class RopeIndex:
    """The model class's own `get_rope_index`, runnable in the collate step without the model: called on a stand-in
    that holds the model's config (all the method reads of its model). Picklable, for DataLoader workers."""

    def __init__(self, model_cls: type, config):
        self.model_cls, self.config = model_cls, config

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        stand_in = types.SimpleNamespace(config=self.config)
        for name in ("get_vision_position_ids",):
            if hasattr(self.model_cls, name):
                setattr(stand_in, name, types.MethodType(getattr(self.model_cls, name), stand_in))
        return rope_positions(types.MethodType(self.model_cls.get_rope_index, stand_in), inputs)


class Qwen2VLFamily(BackboneFamily):
    name = "qwen2_vl"
    model_types = MODEL_TYPES
    takes_images = True
    image_token = "<|image_pad|>"
    chat_image_token = "<|vision_start|><|image_pad|><|vision_end|>"
    # A placeholder without an image stays text by default; prompts vlm2vec/hierarchical ask for the image token
    # (VLM2Vec v1 src/dataset.py:83,130, Gen2Embed src/dataset.py:591), which this family embeds as a token.
    embeds_stray_image_tokens = True
    reference_image_positions = True
    takes_videos = True
    video_token = "<|video_pad|>"
    chat_video_token = "<|vision_start|><|video_pad|><|vision_end|>"
    #: Images (pages) one item may carry; the processor has no hard limit, the context length does.
    max_images_per_item = 16
    default_pooling = "last"
    padding_side = "left"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    decoder_layer_classes = ("Qwen2VLDecoderLayer", "Qwen2_5_VLDecoderLayer", "Qwen2VLVisionBlock",
                             "Qwen2_5_VLVisionBlock")
    vision_module = "visual"
    towers = {"vision": ("visual",)}
    image_feature_keys = ("pixel_values", "image_grid_thw")
    packed_positions = "mrope"

    def load_model(self, path, config, dtype) -> nn.Module:
        if path is not None:
            return load_pretrained(self, path, dtype)  # the model type is checked before any weight is read
        from transformers import Qwen2VLModel

        cfg = tiny_qwen2vl_config(tiny_qwen_tokenizer(), (config or {}).get("text"), (config or {}).get("vision"))
        model = Qwen2VLModel(cfg)
        return cast_weights(model, dtype)

    def load_processor(self, path, config, image):
        image = dict(image or {})
        video = image.pop("video", None)  # model.image.video: the video processor's pixel budget (qwen_video.py)
        kwargs = _image_processor_kwargs(image)
        resize = check_resize(image.get("resize"))
        if path is None:
            from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

            processor = ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(**kwargs),
                                                  tokenizer=tiny_qwen_tokenizer())
            processor.embedlab_resize = resize
            return with_video(processor, self.name, None, video)
        path = processor_source(path)
        if torchvision_usable():
            processor = AutoProcessor.from_pretrained(path, **kwargs)
        else:
            processor = ImageOnlyQwen2VLProcessor(
                image_processor=AutoImageProcessor.from_pretrained(path, **kwargs),
                tokenizer=AutoTokenizer.from_pretrained(path),
            )
        processor.tokenizer.padding_side = self.padding_side
        processor.embedlab_resize = resize
        return with_video(processor, self.name, path, video)

    def bind(self, processor, model):
        core = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: the wrapped model
        if hasattr(type(core), "get_rope_index"):
            processor.embedlab_rope = RopeIndex(type(core), core.config)

    def prepare(self, processor, texts, images, max_length):
        policy = getattr(processor, "embedlab_resize", None)
        images = [_resize_visual(im, policy) for im in images]
        if has_video_or_pages(images):  # rows with a video clip or several images (qwen_video.py)
            inputs = qwen_processor_inputs(processor, texts, images, self.max_images_per_item, max_length)
        else:
            inputs = processor_inputs(processor, texts, images, max_length)
        visual_rows = torch.tensor([im is not None for im in images])
        ids = processor.tokenizer.convert_tokens_to_ids
        inputs["mm_token_type_ids"] = reference_mm_token_type_ids(
            inputs["input_ids"], visual_rows, processor.image_token_id, ids("<|vision_start|>"),
            ids(self.video_token))
        inputs["image_rows"] = visual_rows  # rows with a visual input (image, pages or video)
        # Computed here, on the host, from the collated CPU tensors: in the forward they would be device work with
        # host syncs (transformers' index loops over rows with `.item()`).
        inputs["stray_image_tokens"] = bool(((inputs["input_ids"] == processor.image_token_id)
                                             & ~visual_rows[:, None]).any())
        rope = getattr(processor, "embedlab_rope", None)
        if rope is not None:
            inputs["position_ids"] = rope(inputs)
        return inputs

    def rope_positions(self, model, inputs) -> torch.Tensor:
        """[3, B, T] M-RoPE positions from the reference-rule `mm_token_type_ids` (1D for everything else)."""
        return rope_positions(model.get_rope_index, inputs)

    def encode_inputs(self, model, inputs, pooling):
        inputs = dict(inputs)
        image_rows = inputs.pop("image_rows", None)
        if image_rows is None:
            raise ValueError("Qwen2-VL inputs must come from the family's prepare() (image_rows is missing)")
        positions = inputs.pop("position_ids", None)  # computed by prepare when the processor is bound to the model
        if positions is None:
            positions = self.rope_positions(model, inputs)
        stray = inputs.pop("stray_image_tokens", None)
        mask = inputs["attention_mask"]
        image_rows = image_rows.to(mask.device)
        if stray is None:
            stray = bool(((inputs["input_ids"] == model.config.image_token_id) & ~image_rows[:, None]).any())
        if any(k in inputs for k in VISUAL_KEYS[::2]) and stray:
            # Image tokens in text-only rows keep their token embedding (the reference feeds image features only
            # into rows with an image), while the model scatters features into every image token of its batch:
            # the features are scattered here, into the visual rows' tokens only, in one pass over the decoder
            # (one pass whatever the rows, so that every rank runs the same modules under FSDP).
            hidden = self._scatter_forward(model, inputs, image_rows, positions)
        else:
            hidden = model(**inputs, position_ids=positions, use_cache=False).last_hidden_state
        return pool(hidden, mask, pooling)

    @staticmethod
    def _scatter_forward(model, inputs, image_rows, positions) -> torch.Tensor:
        """The model's forward with the visual features placed only in rows that have a visual input."""
        ids = inputs["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        for values, grid, token, features in (
                ("pixel_values", "image_grid_thw", model.config.image_token_id, model.get_image_features),
                ("pixel_values_videos", "video_grid_thw", model.config.video_token_id, model.get_video_features)):
            if values not in inputs:
                continue
            out = features(inputs[values], inputs[grid])
            out = out.pooler_output if hasattr(out, "pooler_output") else out
            feats = torch.cat(list(out)) if isinstance(out, (list, tuple)) else out
            slots = (ids == token) & image_rows[:, None]
            if int(slots.sum()) != feats.shape[0]:
                raise ValueError(f"{int(slots.sum())} visual token slots in the rows with a visual input, but "
                                 f"{feats.shape[0]} visual features: the processor's token expansion and the "
                                 "model's merge size disagree")
            embeds = embeds.masked_scatter(slots.unsqueeze(-1).to(embeds.device), feats.to(embeds.dtype))
        out = model.language_model(input_ids=None, inputs_embeds=embeds, attention_mask=inputs["attention_mask"],
                                   position_ids=positions, use_cache=False)
        return out.last_hidden_state

    def chat(self, system, user, assistant=None):
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        tail = f"{assistant}<|im_end|>\n" if assistant is not None else ""
        return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{tail}"

    def save_processor(self, processor, directory: Path) -> None:
        # Saved as its parts so that AutoImageProcessor/AutoTokenizer (and AutoProcessor) reload it.
        processor.image_processor.save_pretrained(str(directory))
        processor.tokenizer.save_pretrained(str(directory))
        save_video_processor(processor, directory)


register_family(Qwen2VLFamily())
