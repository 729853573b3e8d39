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
    takes_images: bool = False
    #: What the MMEB placeholder becomes in plain prompts (reference-code convention).
    image_token: str | None = None
    #: What it becomes inside the chat layout (the model's own chat template convention).
    chat_image_token: str | None = None
    default_pooling: str = "last"
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

    def save_processor(self, processor, directory: Path) -> None:
        processor.save_pretrained(str(directory))


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
