"""Backbone families (base class and registry): how to load a model and its processor, turn inputs into one vector, and
what a family needs elsewhere (image token, chat layout, LoRA targets, decoder layers for FSDP).

A family is a small class registered in `FAMILIES`. Adding one (Qwen3-VL, InternVL, …) means
subclassing `BackboneFamily`, filling in its class attributes and `load_model`/`load_processor`/
`encode_inputs`/`prepare`, and adding a `conf/model/*.yaml` (see the README).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..pooling import pool


class UnknownFamilyError(ValueError):
    pass


class BackboneFamily:
    """Base class; the attributes below are what the rest of the framework asks of a family."""

    name: str = ""
    #: `config.json` model types this family loads; a checkpoint of another type is refused by name.
    model_types: tuple[str, ...] = ()
    takes_images: bool = False
    #: What the MMEB placeholder becomes in plain prompts (reference-code convention).
    image_token: str | None = None
    #: What it becomes inside the chat layout (the model's own chat template convention).
    chat_image_token: str | None = None
    default_pooling: str = "last"
    #: Pooling modes the family supports ("model" = the model's own pooling head, e.g. dual encoders).
    pooling_modes: tuple[str, ...] = ("last", "mean", "cls")
    padding_side: str = "right"
    #: Module-name suffixes that LoRA adapts by default.
    lora_target_modules: tuple[str, ...] = ()
    #: Class names of the repeated blocks (FSDP auto-wrap, activation checkpointing).
    decoder_layer_classes: tuple[str, ...] = ()
    #: Attribute path of the vision tower inside the loaded model (frozen with freeze_vision).
    vision_module: str | None = None

    def load_model(self, path: str | None, config: dict | None, dtype: torch.dtype | None) -> nn.Module:
        raise NotImplementedError

    def load_processor(self, path: str | None, config: dict | None, image: dict | None) -> Any:
        raise NotImplementedError

    def prepare(self, processor, texts: list[str], images: list, max_length: int) -> dict[str, torch.Tensor]:
        """Tokenise formatted texts (and their images) into model inputs."""
        raise NotImplementedError

    def encode_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
        """Model inputs → one (unnormalised) vector per row."""
        out = model(**inputs)
        return pool(out.last_hidden_state, inputs["attention_mask"], pooling)

    def chat(self, system: str | None, user: str) -> str:
        raise ValueError(f"family {self.name!r} has no chat layout; use prompt=plain")

    @property
    def has_chat(self) -> bool:
        return type(self).chat is not BackboneFamily.chat

    def check_pooling(self, pooling: str) -> None:
        if pooling not in self.pooling_modes:
            own = " ('model' = the model's own heads)" if "model" in self.pooling_modes else ""
            raise ValueError(f"family {self.name!r} supports pooling {list(self.pooling_modes)}{own}, got {pooling!r}; "
                             "leave model.pooling null for the family's default")

    def save_processor(self, processor, directory: Path) -> None:
        processor.save_pretrained(str(directory))


def processor_inputs(processor, texts, images) -> dict:
    """Call a multimodal processor on formatted texts and the images present (None where a row has none),
    left as long as the longest row: no truncation, which could cut through a row's image tokens."""
    present = [im for im in images if im is not None]
    return dict(processor(text=list(texts), images=present or None, padding=True, return_tensors="pt"))


def require_model_type(path: str, family: BackboneFamily, accepted: tuple[str, ...] | None = None,
                       hint: str = "") -> dict:
    """Read `path`'s config.json (no weights) and refuse a checkpoint of another architecture, naming the
    family that does load it when one is registered. Returns the config dict.

    `accepted` defaults to the family's `model_types`; an empty tuple accepts any type that no other
    registered family claims (text encoders: bert, roberta, mpnet, …)."""
    from transformers import PretrainedConfig

    accepted = family.model_types if accepted is None else accepted
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path)
    except OSError as err:
        raise OSError(f"cannot read the model config of {path!r} for family {family.name!r}: {err}. model.path must "
                      "be a hub id or a local directory with a config.json") from err
    model_type = config_dict.get("model_type")
    owners = [f.name for f in FAMILIES.values() if f is not family and model_type in f.model_types]
    if model_type in accepted or (not accepted and not owners):
        return config_dict
    where = (f"it belongs to family {owners[0]!r}: set model.family={owners[0]} (or use that family's model config)"
             if owners else "no registered family loads it")
    raise ValueError(f"{path} holds a {model_type!r} checkpoint (architectures {config_dict.get('architectures')}), "
                     f"but family {family.name!r} loads only {list(accepted) or 'unclaimed types'}; {where}.{hint}")


def torchvision_usable() -> bool:
    """torchvision present and importable next to this torch (it is not on CPU-only builds here)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


FAMILIES: dict[str, BackboneFamily] = {}


def register_family(family: BackboneFamily) -> BackboneFamily:
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> BackboneFamily:
    if name not in FAMILIES:
        raise UnknownFamilyError(
            f"unknown backbone family {name!r}; available: {', '.join(sorted(FAMILIES))}. "
            "A new family is a BackboneFamily subclass registered with register_family (see README)."
        )
    return FAMILIES[name]
