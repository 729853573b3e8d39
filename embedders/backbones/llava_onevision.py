"""LLaVA-OneVision (LLaVE's and Aquila-VL's architecture): a SigLIP vision tower, a 2-layer projector and a
Qwen2 decoder, with the real anyres processor (image tiling, `<image>` expansion to one token per visual
feature including the unpadding and newline features), left padding, last-token pooling.

Processor paths: the stock `AutoProcessor` where torchvision works (GPU machines); otherwise
`ImageOnlyLlavaOnevisionProcessor`, which needs no video processor (the video processor requires
torchvision) and takes the checkpoint's image processor (PIL backend), tokenizer and processor settings.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn
from transformers import AutoProcessor, LlavaOnevisionProcessor

from ..pooling import pool
from ..tiny import tiny_llava_qwen_tokenizer
from .base import (
    BackboneFamily,
    cast_weights,
    load_pretrained,
    processor_inputs,
    processor_source,
    register_family,
    sum_features,
    torchvision_usable,
)
from .qwen2_vl import Qwen2VLFamily

MODEL_TYPES = ("llava_onevision",)

#: Tiny-model defaults: 28-px tiles of 14-px patches (4 visual tokens per tile) and anyres grids up to 2x2 tiles,
#: the real layout (384-px tiles, grids up to 6x6) scaled down so that a forward takes milliseconds.
TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024)
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                   patch_size=14)
TINY_GRID_TILES = ((1, 1), (1, 2), (2, 1), (2, 2))
TINY_CONFIG_KEYS = {"text", "vision", "image_grid_pinpoints", "vision_aspect_ratio"}


class ImageOnlyLlavaOnevisionProcessor(LlavaOnevisionProcessor):
    """LLaVA-OneVision processor without a video processor (its attributes follow this signature)."""

    def __init__(self, image_processor=None, tokenizer=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, chat_template=None, image_token="<image>",
                 video_token="<video>", vision_aspect_ratio="anyres_max_9", **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         num_image_tokens=num_image_tokens,
                         vision_feature_select_strategy=vision_feature_select_strategy, chat_template=chat_template,
                         image_token=image_token, video_token=video_token, vision_aspect_ratio=vision_aspect_ratio,
                         **kwargs)

    def to_dict(self):
        # Saved under the stock class name, so that AutoProcessor reloads the directory where torchvision works.
        out = super().to_dict()
        out["processor_class"] = LlavaOnevisionProcessor.__name__
        return out


def _tiny_spec(config: dict | None) -> dict:
    """Resolved tiny settings shared by the model and its processor (they must agree on tiling)."""
    config = dict(config or {})
    unknown = set(config) - TINY_CONFIG_KEYS
    if unknown:
        raise ValueError(f"model.config has unknown key(s) {sorted(unknown)} for a tiny LLaVA-OneVision; "
                         f"known: {sorted(TINY_CONFIG_KEYS)}")
    vision = {**TINY_VISION, **(config.get("vision") or {})}
    tile = int(vision["image_size"])
    if tile % int(vision["patch_size"]):
        raise ValueError(f"model.config.vision.image_size ({tile}) must be a multiple of patch_size "
                         f"({vision['patch_size']})")
    pinpoints = config.get("image_grid_pinpoints") or [[tile * h, tile * w] for h, w in TINY_GRID_TILES]
    return {
        "text": {**TINY_TEXT, **(config.get("text") or {})},
        "vision": vision,
        "image_grid_pinpoints": [list(map(int, p)) for p in pinpoints],
        "vision_aspect_ratio": str(config.get("vision_aspect_ratio") or "anyres_max_9"),
    }


def tiny_llava_onevision_config(tokenizer, config: dict | None = None):
    """A LLaVA-OneVision config of the real architecture (Qwen2 text, SigLIP vision, full feature selection of the
    last layer) at toy size, wired to `tokenizer`'s ids."""
    from transformers import LlavaOnevisionConfig

    spec = _tiny_spec(config)
    text = dict(spec["text"], model_type="qwen2", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                bos_token_id=None, eos_token_id=tokenizer.eos_token_id)
    vision = dict(spec["vision"], model_type="siglip_vision_model", vision_use_head=False)
    ids = tokenizer.convert_tokens_to_ids
    return LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=spec["image_grid_pinpoints"],
        vision_aspect_ratio=spec["vision_aspect_ratio"],
        tie_word_embeddings=False,
    )


def tiny_llava_onevision_processor(config: dict | None = None) -> ImageOnlyLlavaOnevisionProcessor:
    """The real image processor (PIL backend) with the tiny tiling, the tiny tokenizer, matching settings."""
    from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

    spec = _tiny_spec(config)
    tile, patch = int(spec["vision"]["image_size"]), int(spec["vision"]["patch_size"])
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile},
                                                      image_grid_pinpoints=spec["image_grid_pinpoints"])
    return ImageOnlyLlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tiny_llava_qwen_tokenizer(),
                                            num_image_tokens=(tile // patch) ** 2,
                                            vision_feature_select_strategy="full",
                                            vision_aspect_ratio=spec["vision_aspect_ratio"])


class LlavaOnevisionFamily(BackboneFamily):
    name = "llava_onevision"
    model_types = MODEL_TYPES
    takes_images = True
    image_token = "<image>"
    chat_image_token = "<image>"
    placeholder_without_image = "literal"  # LLaVE llava/eval/model_embed.py:97 (text-only rows are left as they are)
    default_pooling = "last"
    padding_side = "left"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    # Vision blocks too: FSDP units then never mix a frozen tower with trainable decoder weights.
    decoder_layer_classes = ("Qwen2DecoderLayer", "SiglipEncoderLayer")
    vision_module = "vision_tower"
    towers = {"vision": ("vision_tower", "multi_modal_projector", "image_newline")}
    packed_positions = "rope"  # the Qwen2 decoder

    def touch_tower(self, model, tower, dummy):
        # The feature layer and selection the model's forward uses, passed explicitly (transformers versions
        # differ in whether get_image_features fills them from the config).
        config = model.config
        out = model.get_image_features(pixel_values=dummy["pixel_values"], image_sizes=dummy["image_sizes"],
                                       vision_feature_layer=config.vision_feature_layer,
                                       vision_feature_select_strategy=config.vision_feature_select_strategy)
        return sum_features(out)

    #: The language model is Qwen2: the same ChatML layout as Qwen2-VL.
    chat = Qwen2VLFamily.chat

    def load_model(self, path, config, dtype) -> nn.Module:
        if path is not None:
            return load_pretrained(self, path, dtype, MODEL_TYPES, hint=(
                " Checkpoints in the original LLaVA-NeXT repository format (LLaVE, BAAI/Aquila-VL-2B-llava-qwen, "
                "lmms-lab/*: model_type 'llava'/'qwen2'/'llava_qwen') must first be converted to the Hugging Face "
                "format with transformers' convert_llava_onevision_weights_to_hf.py (llava-hf/* are converted)."))
        from transformers import LlavaOnevisionModel

        model = LlavaOnevisionModel(tiny_llava_onevision_config(tiny_llava_qwen_tokenizer(), config))
        return cast_weights(model, dtype)

    def load_processor(self, path, config, image):
        if image:
            raise ValueError(f"model.image has key(s) {sorted(image)}, but LLaVA-OneVision's image tiling is fixed by "
                             "the checkpoint (image_grid_pinpoints and vision_aspect_ratio in its config, which the "
                             "processor must match); set model.image: null")
        if path is None:
            processor = tiny_llava_onevision_processor(config)
        elif torchvision_usable():
            processor = AutoProcessor.from_pretrained(processor_source(path))
        else:
            processor = ImageOnlyLlavaOnevisionProcessor.from_pretrained(processor_source(path))
        processor.tokenizer.padding_side = self.padding_side
        return processor

    def prepare(self, processor, texts, images, max_length):
        return processor_inputs(processor, texts, images, max_length)

    def encode_inputs(self, model, inputs, pooling):
        # The Qwen2 decoder numbers positions 0..T-1 whatever the padding; positions counted from the mask make a
        # left-padded row compute exactly what it computes alone (as generate() does).
        mask = inputs["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        out = model(**inputs, position_ids=positions, use_cache=False)
        return pool(out.last_hidden_state, mask, pooling)

    def save_processor(self, processor, directory: Path) -> None:
        processor.save_pretrained(str(directory))
        # A standalone preprocessor_config.json too, which plain AutoImageProcessor (and the video-processor
        # fallback of the stock AutoProcessor) read.
        processor.image_processor.save_pretrained(str(directory))


register_family(LlavaOnevisionFamily())
