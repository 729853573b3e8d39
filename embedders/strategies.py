"""Distributed strategies that need to know the model: FSDP wraps and checkpoints the backbone's
repeated blocks, whose classes each backbone family names (`decoder_layer_classes`)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from .finetune import disable_hf_checkpointing, hf_checkpointing_enabled

log = logging.getLogger(__name__)


def layer_classes(module: nn.Module, names) -> set[type[nn.Module]]:
    """The classes among `module`'s submodules whose names are in `names` (must find at least one)."""
    names = set(names)
    found = {type(m) for m in module.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"no submodule of class {sorted(names)} in the model: FSDP has nothing to wrap")
    return found


def fsdp_strategy(module: nn.Module, sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded",
                  activation_checkpointing: bool | None = None, cpu_offload: bool = False, **kwargs):
    """Lightning FSDPStrategy wrapping the family's decoder (and vision) blocks; LoRA-compatible.

    Activation checkpointing, one mechanism per run (two would recompute every block twice):
    `activation_checkpointing=None` follows `model.gradient_checkpointing` — when the model asks for it, FSDP's
    checkpoint wrapper does it on the same blocks and transformers' flag is switched off; `True` makes FSDP
    checkpoint and refuses a model that also has transformers' flag on; `False` leaves it to the model.

    Parameters: FSDP flattens each wrapped block into one tensor of one dtype, so a model whose frozen weights
    are bf16 (`model.dtype`) and trainable ones fp32 (`model.trainable_dtype`) is made uniformly fp32 here;
    with `trainer.precision=bf16-mixed` FSDP computes in bf16 and keeps these fp32 weights as master copy."""
    from lightning.pytorch.strategies import FSDPStrategy

    embedder = getattr(module, "embedder", module)
    classes = layer_classes(embedder, embedder.family.decoder_layer_classes)
    hf_flag = hf_checkpointing_enabled(embedder.backbone)
    if activation_checkpointing is None:
        activation_checkpointing = hf_flag
    elif activation_checkpointing and hf_flag:
        raise ValueError("two activation-checkpointing mechanisms requested: trainer.strategy.activation_checkpointing"
                         "=true and model.gradient_checkpointing=true; set trainer.strategy.activation_checkpointing="
                         "null (FSDP checkpoints the blocks when the model asks for it) or turn one of them off")
    if activation_checkpointing and hf_flag:
        disable_hf_checkpointing(embedder.backbone)
        log.info("activation checkpointing by FSDP's wrapper on %s (transformers' own flag switched off: one "
                 "mechanism, each block recomputed once)", sorted(c.__name__ for c in classes))
    dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
    if len(dtypes) > 1:
        log.info("FSDP needs one parameter dtype per wrapped block: frozen weights %s cast to float32",
                 sorted(str(d) for d in dtypes - {torch.float32}))
        for p in module.parameters():
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,  # LoRA: frozen and trainable parameters share flat parameters
        **kwargs,
    )


def full_state_dict(root: nn.Module) -> dict:
    """The full, unsharded state dict of an FSDP-wrapped model. Collective: every rank of the root's
    process group must call it; rank 0 receives the tensors (moved to CPU when they live on GPUs), the
    other ranks an empty dict."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    on_gpu = any(p.is_cuda for p in root.parameters())
    config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=True)
    with FSDP.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
        return root.state_dict()


def unsharded_copy(module: nn.Module, state: dict) -> nn.Module:
    """A freshly built, unwrapped module of `module`'s class and hyperparameters holding `state` (every
    weight must match; the loss's own parameters, e.g. a learnable temperature, are left out: the copy
    is for saving and evaluating the embedder)."""
    fresh = type(module)(**module.hparams)
    weights = {k: v for k, v in state.items() if not k.startswith("loss.")}
    nn.Module.load_state_dict(fresh, weights, strict=True)
    return fresh


def standalone_module(trainer, module: nn.Module) -> nn.Module | None:
    """After `trainer.fit`: a module that rank 0 can save and evaluate on its own.

    Under FSDP the parameters are sharded across ranks, so neither a forward pass nor `save_pretrained`
    on rank 0 alone sees the model; every rank must call this (it gathers the full state dict, a
    collective) and rank 0 gets an unwrapped copy holding the trained weights, the other ranks None.
    Other strategies keep whole parameters on every rank: `module` itself."""
    from lightning.pytorch.strategies import FSDPStrategy

    strategy = trainer.strategy
    if not isinstance(strategy, FSDPStrategy):
        return module
    state = full_state_dict(strategy.model)
    return unsharded_copy(module, state) if trainer.is_global_zero else None
