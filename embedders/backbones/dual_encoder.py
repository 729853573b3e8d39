"""CLIP and SigLIP dual encoders (the MMEB zero-shot baselines) as backbone families `clip` and `siglip`:
separate text and image towers, each ending in the model's own pooling and projection.

One row → one vector:
- text only → the text embedding; image only → the image embedding (a row whose text is empty once the MMEB
  placeholder is stripped);
- text and image → the sum of the two L2-normalised embeddings (score-level fusion as in UniIR's CLIP-SF, the
  common way to run dual encoders on mixed-modality rows; whether the MMEB paper's CLIP baseline normalised the
  parts before summing is unverified); with `normalize: true` (the default) the Embedder normalises the sum.
Single-modality rows come out L2-normalised too, so all rows live on the same scale.

The MMEB placeholder `<|image_1|>` is removed from the text (`image_token = ""`): the image goes to the vision
tower, not into the token sequence. Texts are truncated to the text tower's positions (CLIP 77, SigLIP 64);
SigLIP texts are padded to exactly that length and run without an attention mask, as SigLIP was trained (its
text pooling reads the last position). `model.pooling` is not used for the towers' pooling: it must stay at the
family default (null in the config); anything else is refused. There is no chat layout (prompt=plain only).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor

from ..tiny import tiny_clip_tokenizer, tiny_siglip_tokenizer
from .base import BackboneFamily, cast_weights, register_family, require_model_type, untouched_rng

TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
TINY_VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, image_size=28,
                   patch_size=14)
TINY_CONFIG_KEYS = {"text", "vision", "projection_dim"}


def _tiny_parts(config: dict | None, text_positions: int) -> tuple[dict, dict, dict]:
    config = dict(config or {})
    unknown = set(config) - TINY_CONFIG_KEYS
    if unknown:
        raise ValueError(f"model.config has unknown key(s) {sorted(unknown)} for a tiny dual encoder; "
                         f"known: {sorted(TINY_CONFIG_KEYS)}")
    text = {**TINY_TEXT, "max_position_embeddings": text_positions, **(config.get("text") or {})}
    vision = {**TINY_VISION, **(config.get("vision") or {})}
    return text, vision, config


class DualEncoderFamily(BackboneFamily):
    """Shared behaviour; subclasses name the model types, the tiny model and processor, and the text padding."""

    model_types: tuple[str, ...] = ()
    takes_images = True
    image_token = ""  # stripped: the image goes to the vision tower
    chat_image_token = ""  # so that a chat prompt reaches chat(), which explains the refusal
    placeholder_without_image = "strip"
    # Both towers pool with the model's own heads, then project.
    default_pooling = "model"
    pooling_modes = ("model",)
    multi_vector = False  # the towers pool inside the model: no token states to keep
    padding_side = "right"
    lora_target_modules = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    vision_module = "vision_model"
    towers = {"text": ("text_model", "text_projection"), "vision": ("vision_model", "visual_projection")}
    #: Pad every text to the text tower's full length and give no attention mask (SigLIP's training setup).
    pad_to_max_positions = False
    text_positions = 77

    # ------------------------------------------------------------------ loading
    def load_model(self, path, config, dtype) -> nn.Module:
        if path is not None:
            require_model_type(path, self, self.model_types)
            return AutoModel.from_pretrained(path, dtype=dtype)
        text, vision, config = _tiny_parts(config, self.text_positions)
        model = self.tiny_model(self.tiny_tokenizer(text["max_position_embeddings"]), text, vision, config)
        return cast_weights(model, dtype)

    def load_processor(self, path, config, image):
        if image:
            raise ValueError(f"model.image has key(s) {sorted(image)}, but {self.name} images are resized to the "
                             "checkpoint's fixed input size; set model.image: null")
        if path is None:
            text, vision, _ = _tiny_parts(config, self.text_positions)
            processor = self.tiny_processor(self.tiny_tokenizer(text["max_position_embeddings"]),
                                            int(vision["image_size"]))
        else:
            # CLIP/SigLIP processors have no video processor: the stock class works with or without torchvision
            # (without it, AutoImageProcessor picks the PIL backend).
            processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = self.padding_side
        return processor

    def tiny_tokenizer(self, model_max_length: int):
        raise NotImplementedError

    def tiny_model(self, tokenizer, text: dict, vision: dict, config: dict) -> nn.Module:
        raise NotImplementedError

    def tiny_processor(self, tokenizer, image_size: int):
        raise NotImplementedError

    # ------------------------------------------------------------------ inputs
    def prepare(self, processor, texts, images, max_length):
        has_text = [bool(t.strip()) for t in texts]
        has_image = [im is not None for im in images]
        empty = [i for i, (t, v) in enumerate(zip(has_text, has_image)) if not (t or v)]
        if empty:
            raise ValueError(f"row(s) {empty} of the batch have neither text (once the image placeholder is removed) "
                             f"nor an image; {self.name} has nothing to embed for them")
        tokenizer = processor.tokenizer
        positions = int(tokenizer.model_max_length)
        if positions > 100_000:  # the tokenizer does not know its model's limit ("very large" sentinel)
            positions = self.text_positions
        encoded = tokenizer(list(texts), truncation=True, max_length=min(int(max_length), positions))
        padding = "max_length" if self.pad_to_max_positions else "longest"
        inputs = dict(tokenizer.pad(encoded, padding=padding, max_length=positions, return_tensors="pt"))
        inputs["has_text"] = torch.tensor(has_text)
        inputs["has_image"] = torch.tensor(has_image)
        present = [im for im in images if im is not None]
        if present:
            inputs["pixel_values"] = processor.image_processor(present, return_tensors="pt")["pixel_values"]
        return inputs

    def towers_in(self, inputs):
        return {t for t, key in (("text", "has_text"), ("vision", "has_image")) if bool(inputs[key].any())}

    def dummy_inputs(self, processor, tower, max_length):
        from PIL import Image

        if tower == "text":
            return self.prepare(processor, ["a"], [None], max_length)
        return self.prepare(processor, [""], [Image.new("RGB", (64, 64), (128, 128, 128))], max_length)

    def encode_inputs(self, model, inputs, pooling):
        return self._encode(model, inputs)

    def encode_uniform(self, model, inputs, pooling, dummy):
        return self._encode(model, inputs, dummy)

    def _text(self, model, inputs, rows=None) -> torch.Tensor:
        ids = inputs["input_ids"] if rows is None else inputs["input_ids"][rows]
        kwargs = {"input_ids": ids}
        if not self.pad_to_max_positions:
            kwargs["attention_mask"] = inputs["attention_mask"] if rows is None else inputs["attention_mask"][rows]
        return model.get_text_features(**kwargs, return_dict=True).pooler_output

    def _encode(self, model, inputs, dummy=None):
        """Both towers' embeddings placed in their rows; with `dummy` (FSDP's uniform trace) a tower without rows
        runs on `dummy(tower)` in its place (text tower first, then the image tower, as for real rows) and its
        output is added times 0."""
        has_text, has_image = inputs["has_text"], inputs["has_image"]
        input_ids = inputs["input_ids"]
        positions = model.config.text_config.max_position_embeddings
        if input_ids.shape[1] > positions or (self.pad_to_max_positions and input_ids.shape[1] != positions):
            raise ValueError(f"{self.name}'s text tower expects {positions} token positions "
                             f"{'exactly' if self.pad_to_max_positions else 'at most'}, got {input_ids.shape[1]}: "
                             "the tokenizer's model_max_length disagrees with the model; fix tokenizer_config.json")
        rows, touch = [], []
        if has_text.any():
            rows.append((has_text, nn.functional.normalize(self._text(model, inputs, has_text), dim=-1)))
        elif dummy is not None:
            with untouched_rng(input_ids.device):
                touch.append(self._text(model, dummy("text")).float().sum())
        if has_image.any():
            image = model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=True).pooler_output
            rows.append((has_image, nn.functional.normalize(image, dim=-1)))
        elif dummy is not None:
            pixels = dummy("vision")["pixel_values"]
            with untouched_rng(input_ids.device):
                touch.append(model.get_image_features(pixel_values=pixels, return_dict=True).pooler_output.float()
                             .sum())
        dim = rows[0][1].shape[-1]
        out = rows[0][1].new_zeros(input_ids.shape[0], dim)
        for mask, emb in rows:
            out = out.index_add(0, mask.nonzero().squeeze(1).to(out.device), emb)
        for value in touch:
            out = out + 0.0 * value.to(out.dtype)
        return out

    def chat(self, system, user, assistant=None):
        raise ValueError(f"{self.name} is a dual encoder without a chat layout: the hierarchical prompt is for "
                         "generative multimodal LMs; use prompt=plain")


class ClipFamily(DualEncoderFamily):
    name = "clip"
    model_types = ("clip",)
    decoder_layer_classes = ("CLIPEncoderLayer",)
    text_positions = 77

    def tiny_tokenizer(self, model_max_length):
        return tiny_clip_tokenizer(model_max_length)

    def tiny_model(self, tokenizer, text, vision, config):
        from transformers import CLIPConfig, CLIPModel

        # eos_token_id is the tokenizer's (not CLIP's legacy 2): the text tower pools at the first end token.
        text = dict(text, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision,
                                    projection_dim=int(config.get("projection_dim", 32))))

    def tiny_processor(self, tokenizer, image_size):
        from transformers import CLIPProcessor
        from transformers.models.clip import CLIPImageProcessorPil

        image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                                crop_size={"height": image_size, "width": image_size})
        return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


class SiglipFamily(DualEncoderFamily):
    name = "siglip"
    model_types = ("siglip",)
    decoder_layer_classes = ("SiglipEncoderLayer",)
    pad_to_max_positions = True
    text_positions = 64

    def tiny_tokenizer(self, model_max_length):
        return tiny_siglip_tokenizer(model_max_length)

    def tiny_model(self, tokenizer, text, vision, config):
        from transformers import SiglipConfig, SiglipModel

        if "projection_dim" in config:
            raise ValueError("SigLIP has no projection_dim: its text head projects onto the vision width "
                             "(model.config.vision.hidden_size)")
        text = dict(text, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                    eos_token_id=tokenizer.eos_token_id, projection_size=vision["hidden_size"])
        return SiglipModel(SiglipConfig(text_config=text, vision_config=dict(vision, vision_use_head=True)))

    def tiny_processor(self, tokenizer, image_size):
        from transformers import SiglipProcessor
        from transformers.models.siglip import SiglipImageProcessorPil

        return SiglipProcessor(image_processor=SiglipImageProcessorPil(size={"height": image_size,
                                                                             "width": image_size}),
                               tokenizer=tokenizer)


register_family(ClipFamily())
register_family(SiglipFamily())
