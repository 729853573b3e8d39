"""Fine-tuning modes applied to a loaded backbone: LoRA/DoRA (peft), frozen vision tower,
non-reentrant gradient checkpointing, and the dtype of trainable weights (fp32 master weights)."""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from .dtypes import resolve_dtype

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
        if hasattr(model, "activation_checkpointing_enable"):  # transformers ≥ 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        model = apply_lora(model, family, dict(lora))
    return model


def _hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if is_peft_model(model) else model


def hf_checkpointing_enabled(model: nn.Module) -> bool:
    """Whether transformers' own (activation/gradient) checkpointing is switched on in `model`."""
    hf = _hf_model(model)
    if hasattr(type(hf), "is_activation_checkpointing"):  # transformers ≥ 5 name
        return bool(hf.is_activation_checkpointing)
    return bool(getattr(hf, "is_gradient_checkpointing", False))


def disable_hf_checkpointing(model: nn.Module) -> None:
    hf = _hf_model(model)
    if hasattr(hf, "activation_checkpointing_disable"):
        hf.activation_checkpointing_disable()
    else:
        hf.gradient_checkpointing_disable()


def lora_target_names(model: nn.Module, family, targets, include_vision: bool = False) -> list[str]:
    """Full names of the linear layers LoRA adapts: name ends with a target suffix, outside the vision
    tower unless `include_vision`, and not inside nn.MultiheadAttention (it reads its out_proj weight
    directly, so an adapter there would be silently skipped)."""
    vision = family.vision_module
    mha_children = {f"{n}.{c}" if n else c for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)
                    for c, _ in m.named_children()}
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name in mha_children:
            continue
        if not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if vision and not include_vision and (name.startswith(vision + ".") or f".{vision}." in f".{name}"):
            continue
        names.append(name)
    return names


def apply_lora(model: nn.Module, family, cfg: dict) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    known = {"r", "alpha", "dropout", "target_modules", "use_dora", "include_vision"}
    unknown = set(cfg) - known
    if unknown:
        raise ValueError(f"model.lora has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    targets = tuple(cfg.get("target_modules") or family.lora_target_modules)
    if not targets:
        raise ValueError(f"family {family.name!r} has no default LoRA target modules; set model.lora.target_modules")
    matched = lora_target_names(model, family, targets, bool(cfg.get("include_vision")))
    if not matched:
        raise ValueError(f"LoRA target modules {list(targets)} match no linear layer of the {family.name} backbone; "
                         f"examples of its module names: {[n for n, _ in list(model.named_modules())[1:8]]}")
    config = LoraConfig(r=int(cfg.get("r", 8)), lora_alpha=int(cfg.get("alpha", 16)),
                        lora_dropout=float(cfg.get("dropout", 0.0)), target_modules=matched,
                        use_dora=bool(cfg.get("use_dora", False)), bias="none")
    checkpointing = (model.is_activation_checkpointing if hasattr(model, "is_activation_checkpointing")
                     else getattr(model, "is_gradient_checkpointing", False))
    if checkpointing:
        # LoRA + checkpointing: the frozen embeddings' output must require grad for the backward to reach adapters.
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, config)
    log.info("LoRA on %d linear layers (r=%s, alpha=%s, dora=%s)", len(matched), config.r, config.lora_alpha,
             config.use_dora)
    return peft_model


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def keep_trainable_in(model: nn.Module, dtype: str | torch.dtype | None = "float32") -> int:
    """Cast every trainable floating-point parameter of `model` to `dtype` (fp32 master weights); frozen ones keep
    the dtype they were loaded in (`model.dtype`: LoRA's base, a frozen vision tower). Returns how many were cast.

    Why: AdamW updating bf16 weights directly loses every update smaller than half a bf16 step (2^-9 relative):
    a 1e-5 step leaves most N(0, 0.02) weights and every norm weight near 1.0 unchanged. With fp32 parameters,
    `trainer.precision=bf16-mixed` still computes in bf16 (autocast), as AMP / DeepSpeed keep an fp32 master copy.
    `dtype` bfloat16/float16 is an explicit opt-in to pure low-precision training and warns; None keeps the
    loaded dtype."""
    target = resolve_dtype(dtype)
    if target is None:
        return 0
    if target in _LOW_PRECISION:
        warnings.warn(f"model.trainable_dtype={dtype}: the optimizer updates {target} weights directly, with no fp32 "
                      "master copy; updates below ~0.4% of a weight's magnitude are lost (a 1e-5 step leaves most "
                      "weights unchanged). Keep trainable_dtype=float32 unless memory forces this", stacklevel=2)
    cast = 0
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != target:
            p.data = p.data.to(target)
            cast += 1
    if cast:
        log.info("kept %d trainable parameter tensor(s) in %s (frozen weights stay in the loaded dtype)", cast, target)
    return cast


#: Plain float attributes through which transformers' layers hold a dropout probability outside nn.Dropout
#: (BERT's SDPA attention: dropout_prob; Llama/Qwen2/Qwen3-VL/SigLIP/CLIP attention: attention_dropout or dropout).
_DROPOUT_ATTRIBUTES = ("dropout_prob", "attention_dropout", "attn_dropout", "dropout", "hidden_dropout",
                       "activation_dropout")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability of a loaded backbone to `p`: nn.Dropout modules, the float attributes
    attention layers read (`_DROPOUT_ATTRIBUTES`) and every `*dropout*` float of its (sub-)configs, so a saved
    model records it. LoRA's own dropout (peft's lora_dropout, set by model.lora.dropout) is left alone.
    Returns how many modules and attributes were changed; raises when `p` is not in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
        raise ValueError(f"model.dropout must be a probability in [0, 1) or null, got {p!r}")
    p = float(p)
    changed = 0
    seen_configs: set[int] = set()

    def set_config(config) -> None:
        if config is None or id(config) in seen_configs or not hasattr(config, "to_dict"):
            return
        seen_configs.add(id(config))
        for key, value in list(vars(config).items()):
            if "dropout" in key and isinstance(value, float):
                setattr(config, key, p)
            elif hasattr(value, "to_dict") and hasattr(value, "model_type"):  # a sub-config (text_config, …)
                set_config(value)

    for name, module in model.named_modules():
        if "lora_" in name:
            continue
        set_config(getattr(module, "config", None))
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = p
            changed += 1
            continue
        for attribute in _DROPOUT_ATTRIBUTES:
            value = module.__dict__.get(attribute)  # plain attributes only; submodules live in _modules
            if isinstance(value, float):
                setattr(module, attribute, p)
                changed += 1
    log.info("dropout set to %g in %d backbone modules/attributes", p, changed)
    return changed
