"""Distributed strategies that need to know the model: FSDP wraps and checkpoints the backbone's
repeated blocks, whose classes each backbone family names (`decoder_layer_classes`)."""

from __future__ import annotations

from torch import nn


def layer_classes(module: nn.Module, names) -> set[type[nn.Module]]:
    """The classes among `module`'s submodules whose names are in `names` (must find at least one)."""
    names = set(names)
    found = {type(m) for m in module.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"no submodule of class {sorted(names)} in the model: FSDP has nothing to wrap")
    return found


def fsdp_strategy(module: nn.Module, sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "sharded",
                  activation_checkpointing: bool = True, cpu_offload: bool = False, **kwargs):
    """Lightning FSDPStrategy wrapping the family's decoder (and vision) blocks; LoRA-compatible."""
    from lightning.pytorch.strategies import FSDPStrategy

    embedder = getattr(module, "embedder", module)
    classes = layer_classes(embedder, embedder.family.decoder_layer_classes)
    return FSDPStrategy(
        auto_wrap_policy=classes,
        activation_checkpointing_policy=classes if activation_checkpointing else None,
        sharding_strategy=sharding_strategy,
        state_dict_type=state_dict_type,
        cpu_offload=cpu_offload,
        use_orig_params=True,  # LoRA: frozen and trainable parameters share flat parameters
        **kwargs,
    )
