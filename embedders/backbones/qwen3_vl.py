"""Qwen3-VL (and the Qwen3-VL-Embedding checkpoints built on it): image, multi-image and video + text decoder
with the real processor (16-px patches, 2x2 merging, image mean/std 0.5; videos as per-frame timestamped token
groups), DeepStack visual features, interleaved M-RoPE, right padding and last-token pooling as in the
published embedder (Qwen3-VL-Embedding's `Qwen3VLEmbedder`: `padding_side='right'`, the hidden state of the last
attended token, L2-normalised).

Processor paths, as for Qwen2-VL: the stock `AutoProcessor` where torchvision works (GPU machines), otherwise the
checkpoint's image processor (PIL backend) and tokenizer in `ImageOnlyQwen3VLProcessor`, given a
`QwenVideoProcessor` (PIL/NumPy, the stock Qwen3-VL resize rule) for videos. The chat layout is Qwen's ChatML,
identical to Qwen2-VL's (inherited); Qwen3-VL's template adds no default system message.
"""

from __future__ import annotations

from torch import nn
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer, Qwen3VLProcessor

from ..pooling import pool
from ..tiny import tiny_qwen_tokenizer
from .base import BackboneFamily, cast_weights, load_pretrained, register_family, torchvision_usable
from .qwen2_vl import Qwen2VLFamily, _image_processor_kwargs, qwen_vision_token_ids
from .qwen_video import qwen_processor_inputs, save_video_processor, with_video

MODEL_TYPES = ("qwen3_vl",)

#: Tiny defaults: images between 64x64 and 96x96 pixels (4 to 9 merged tokens of 32x32 pixels each).
TINY_MIN_PIXELS = 64 * 64
TINY_MAX_PIXELS = 96 * 96
#: Tiny video budget (the Qwen3-VL rule counts pixels over all frames): up to 8 frames of 64x64.
TINY_VIDEO = {"min_pixels": 64 * 64, "max_pixels": 8 * 64 * 64}
QWEN3_IMAGE_MEAN = QWEN3_IMAGE_STD = (0.5, 0.5, 0.5)


class ImageOnlyQwen3VLProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor without a stock video processor (its attributes follow this signature); the family
    attaches a `QwenVideoProcessor` as `video_processor`."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


def tiny_qwen3vl_config(tokenizer, text: dict | None = None, vision: dict | None = None):
    """A Qwen3-VL config of the real architecture at toy size, wired to `tokenizer`'s ids."""
    from transformers import Qwen3VLConfig

    text_cfg = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=2048)
    text_cfg.update(text or {})
    text_cfg.setdefault("head_dim", text_cfg["hidden_size"] // text_cfg["num_attention_heads"])
    if "rope_parameters" not in text_cfg:
        # Interleaved M-RoPE over half the head dim, (t, h, w) in Qwen3-VL's proportions (24:20:20 of 64).
        half = text_cfg["head_dim"] // 2
        h = w = (half * 20) // 64
        text_cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 5_000_000.0,
                                       "mrope_section": [half - h - w, h, w], "mrope_interleaved": True}
    vision_cfg = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=16, spatial_merge_size=2,
                      temporal_patch_size=2, in_channels=3, num_position_embeddings=64, deepstack_visual_indexes=[0])
    vision_cfg.update(vision or {})
    vision_cfg["out_hidden_size"] = text_cfg["hidden_size"]  # the merger projects into the text width
    text_cfg.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return Qwen3VLConfig(text_config=text_cfg, vision_config=vision_cfg, **qwen_vision_token_ids(tokenizer),
                         tie_word_embeddings=False)


class Qwen3VLFamily(BackboneFamily):
    """Positions and image slots as transformers 5 computes them for Qwen3-VL (tokens marked by id in
    `mm_token_type_ids`: image 1, video 2), which is what the Qwen3-VL-Embedding checkpoints run with."""

    name = "qwen3_vl"
    model_types = MODEL_TYPES
    takes_images = True
    image_token = "<|image_pad|>"
    chat_image_token = "<|vision_start|><|image_pad|><|vision_end|>"
    takes_videos = True
    video_token = "<|video_pad|>"
    chat_video_token = "<|vision_start|><|video_pad|><|vision_end|>"
    #: Images (pages) one item may carry; the processor has no hard limit, the context length does.
    max_images_per_item = 16
    default_pooling = "last"
    padding_side = "right"
    # Text projections, plus the vision tower's (adapted only with lora.include_vision=true).
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                           "qkv", "proj", "linear_fc1", "linear_fc2")
    decoder_layer_classes = ("Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock")
    vision_module = "visual"
    towers = {"vision": ("visual",)}
    image_feature_keys = ("pixel_values", "image_grid_thw")
    packed_positions = "mrope"

    def load_model(self, path, config, dtype) -> nn.Module:
        if path is not None:
            return load_pretrained(self, path, dtype)  # type checked before any weight is read; adapters merged
        from transformers import Qwen3VLModel

        cfg = tiny_qwen3vl_config(tiny_qwen_tokenizer(), (config or {}).get("text"), (config or {}).get("vision"))
        model = Qwen3VLModel(cfg)
        return cast_weights(model, dtype)

    def load_processor(self, path, config, image):
        image = dict(image or {})
        video = image.pop("video", None)
        kwargs = _image_processor_kwargs(image)
        if path is None:
            from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

            vision = (config or {}).get("vision") or {}
            image_processor = Qwen2VLImageProcessorPil(
                patch_size=int(vision.get("patch_size", 16)), temporal_patch_size=int(vision.get("temporal_patch_size", 2)),
                merge_size=int(vision.get("spatial_merge_size", 2)), image_mean=list(QWEN3_IMAGE_MEAN),
                image_std=list(QWEN3_IMAGE_STD), min_pixels=kwargs.get("min_pixels", TINY_MIN_PIXELS),
                max_pixels=kwargs.get("max_pixels", TINY_MAX_PIXELS))
            processor = ImageOnlyQwen3VLProcessor(image_processor=image_processor, tokenizer=tiny_qwen_tokenizer())
            video = {**TINY_VIDEO, **(video or {})}
        elif torchvision_usable():
            processor = AutoProcessor.from_pretrained(path, **kwargs)
        else:
            processor = ImageOnlyQwen3VLProcessor(
                image_processor=AutoImageProcessor.from_pretrained(path, **kwargs),
                tokenizer=AutoTokenizer.from_pretrained(path),
            )
        processor.tokenizer.padding_side = self.padding_side
        return with_video(processor, self.name, path, video)

    def prepare(self, processor, texts, images, max_length):
        # images: per row None, an image, a video clip, or a list of those (several pages).
        return qwen_processor_inputs(processor, texts, images, self.max_images_per_item, max_length)

    def encode_inputs(self, model, inputs, pooling):
        out = model(**inputs, use_cache=False)
        return pool(out.last_hidden_state, inputs["attention_mask"], pooling)

    #: Qwen's ChatML layout, as Qwen2-VL's (Qwen3-VL's template adds no default system message either).
    chat = Qwen2VLFamily.chat

    def save_processor(self, processor, directory) -> None:
        # As parts, so that AutoImageProcessor/AutoTokenizer/AutoVideoProcessor (and AutoProcessor) reload them.
        processor.image_processor.save_pretrained(str(directory))
        processor.tokenizer.save_pretrained(str(directory))
        save_video_processor(processor, directory)

register_family(Qwen3VLFamily())
