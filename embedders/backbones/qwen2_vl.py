"""Qwen2-VL and Qwen2.5-VL: image + text decoders with the real processor (image-token
expansion, `pixel_values`, `image_grid_thw`, `mm_token_type_ids`), left padding, last-token pooling.

Processor paths: the stock `AutoProcessor` where torchvision works (GPU machines), otherwise the
checkpoint's image processor (PIL backend) and tokenizer combined in `ImageOnlyQwen2VLProcessor`,
which needs no video processor (the video processor requires torchvision).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoImageProcessor, AutoModel, AutoProcessor, AutoTokenizer, Qwen2VLProcessor

from ..pooling import pool
from .base import BackboneFamily, processor_inputs, register_family, require_model_type, torchvision_usable
from .qwen_video import has_video_or_pages, qwen_processor_inputs, save_video_processor, with_video

MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl")


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2-VL processor without a video processor (its attributes follow this signature)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template, **kwargs)


def _image_processor_kwargs(image: dict | None) -> dict:
    image = dict(image or {})
    kwargs = {}
    if image.get("min_pixels") is not None:
        kwargs["min_pixels"] = int(image["min_pixels"])
    if image.get("max_pixels") is not None:
        kwargs["max_pixels"] = int(image["max_pixels"])
    unknown = set(image) - {"min_pixels", "max_pixels"}
    if unknown:
        raise ValueError(f"model.image has unknown key(s) {sorted(unknown)} for Qwen2-VL; known: min_pixels, max_pixels")
    return kwargs


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
    ids = tokenizer.convert_tokens_to_ids
    text_cfg.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    return Qwen2VLConfig(
        text_config=text_cfg,
        vision_config=vision_cfg,
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )


class Qwen2VLFamily(BackboneFamily):
    name = "qwen2_vl"
    model_types = MODEL_TYPES
    takes_images = True
    image_token = "<|image_pad|>"
    chat_image_token = "<|vision_start|><|image_pad|><|vision_end|>"
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

    def load_model(self, path, config, dtype) -> nn.Module:
        if path is not None:
            require_model_type(path, self)  # before any weight is read
            return AutoModel.from_pretrained(path, dtype=dtype)
        from transformers import Qwen2VLModel

        from ..tiny import tiny_qwen_tokenizer

        cfg = tiny_qwen2vl_config(tiny_qwen_tokenizer(), (config or {}).get("text"), (config or {}).get("vision"))
        model = Qwen2VLModel(cfg)
        return model.to(dtype) if dtype is not None else model

    def load_processor(self, path, config, image):
        image = dict(image or {})
        video = image.pop("video", None)  # model.image.video: the video processor's pixel budget (qwen_video.py)
        kwargs = _image_processor_kwargs(image)
        if path is None:
            from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

            from ..tiny import tiny_qwen_tokenizer

            return with_video(ImageOnlyQwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(**kwargs),
                                                        tokenizer=tiny_qwen_tokenizer()), self.name, None, video)
        if torchvision_usable():
            processor = AutoProcessor.from_pretrained(path, **kwargs)
        else:
            processor = ImageOnlyQwen2VLProcessor(
                image_processor=AutoImageProcessor.from_pretrained(path, **kwargs),
                tokenizer=AutoTokenizer.from_pretrained(path),
            )
        processor.tokenizer.padding_side = self.padding_side
        return with_video(processor, self.name, path, video)

    def prepare(self, processor, texts, images, max_length):
        if has_video_or_pages(images):  # rows with a video clip or several images (qwen_video.py)
            return qwen_processor_inputs(processor, texts, images, self.max_images_per_item, max_length)
        return processor_inputs(processor, texts, images)

    def encode_inputs(self, model, inputs, pooling):
        out = model(**inputs, use_cache=False)
        return pool(out.last_hidden_state, inputs["attention_mask"], pooling)

    def chat(self, system, user):
        head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
        return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"

    def save_processor(self, processor, directory: Path) -> None:
        # Saved as its parts so that AutoImageProcessor/AutoTokenizer (and AutoProcessor) reload it.
        processor.image_processor.save_pretrained(str(directory))
        processor.tokenizer.save_pretrained(str(directory))
        save_video_processor(processor, directory)


register_family(Qwen2VLFamily())
