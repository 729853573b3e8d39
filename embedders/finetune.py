"""Fine-tuning modes applied to a loaded backbone: LoRA/DoRA (peft), frozen vision tower,
non-reentrant gradient checkpointing."""

from __future__ import annotations

import logging
import re

from torch import nn

log = logging.getLogger(__name__)


def is_peft_model(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a dependency
        return False
    return isinstance(model, PeftModel)


def _get_submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def apply_finetuning(model: nn.Module, family, lora: dict | None = None, freeze_vision: bool = False,
                     gradient_checkpointing: bool = False) -> nn.Module:
    if freeze_vision:
        if family.vision_module is None:
            raise ValueError(f"freeze_vision=true, but family {family.name!r} has no vision tower")
        tower = _get_submodule(model, family.vision_module)
        if tower is None:
            raise ValueError(f"freeze_vision: no module {family.vision_module!r} in the {family.name} backbone")
        tower.requires_grad_(False)
    if gradient_checkpointing:
        # Non-reentrant: reentrant checkpointing breaks under DDP ("marked ready twice") and with LoRA.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        model = apply_lora(model, family, dict(lora))
    return model


def lora_target_regex(family, targets) -> str:
    """Regex for peft matching `targets` (suffixes) outside the vision tower."""
    alt = "|".join(re.escape(t) for t in targets)
    if family.vision_module:
        return rf"^(?!.*{re.escape(family.vision_module)}\.).*\.({alt})$"
    return rf"^.*\.({alt})$"


def apply_lora(model: nn.Module, family, cfg: dict) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    known = {"r", "alpha", "dropout", "target_modules", "use_dora", "include_vision"}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"model.lora has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    targets = tuple(cfg.get("target_modules") or family.lora_target_modules)
    if not targets:
        raise ValueError(f"family {family.name!r} has no default LoRA target modules; set model.lora.target_modules")
    if cfg.get("include_vision"):
        pattern = rf"^.*\.({'|'.join(re.escape(t) for t in targets)})$"
    else:
        pattern = lora_target_regex(family, targets)
    matched = [n for n, m in model.named_modules() if re.match(pattern, n) and isinstance(m, nn.Linear)]
    if not matched:
        raise ValueError(f"LoRA target modules {list(targets)} match no linear layer of the {family.name} backbone; "
                         f"examples of its module names: {[n for n, _ in list(model.named_modules())[1:8]]}")
    config = LoraConfig(r=int(cfg.get("r", 8)), lora_alpha=int(cfg.get("alpha", 16)),
                        lora_dropout=float(cfg.get("dropout", 0.0)), target_modules=pattern,
                        use_dora=bool(cfg.get("use_dora", False)), bias="none")
    if getattr(model, "is_gradient_checkpointing", False):
        # LoRA + checkpointing: the frozen embeddings' output must require grad for the backward to reach adapters.
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, config)
    log.info("LoRA on %d linear layers (r=%s, alpha=%s, dora=%s)", len(matched), config.r, config.lora_alpha,
             config.use_dora)
    return peft_model
