"""Backbone families, one module each; importing this package registers them all."""

from . import dual_encoder, llava_onevision, qwen2_vl, qwen3_vl, text_encoder  # noqa: F401  (registration side effects)
from .base import (
    FAMILIES,
    BackboneFamily,
    UnknownFamilyError,
    get_family,
    register_family,
    require_model_type,
    torchvision_usable,
)

__all__ = ["FAMILIES", "BackboneFamily", "UnknownFamilyError", "get_family", "register_family",
           "require_model_type", "torchvision_usable"]
