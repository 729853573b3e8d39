"""The FSDP strategy: FSDP2 (`torch.distributed.fsdp.fully_shard`) through Lightning's `ModelParallelStrategy`,
sharding the backbone's repeated blocks (each family's `decoder_layer_classes`) as units, on GPUs (NCCL) or on
CPU ranks (gloo, `trainer=fsdp_cpu`: the same code, how FSDP is tested without GPUs).

What it owns:
- the units: every block of the family's block classes is one FSDP unit, the rest of the embedder (embeddings,
  final norm, patch embedding, projector) the root unit, and the loss's learnable temperature a root of its own;
- mixed precision: parameters keep their own dtypes (frozen bf16 base, fp32 trainable master weights, side by
  side in one unit: FSDP2 shards per parameter); gradients are reduce-scattered in fp32; buffers (RoPE's
  `inv_freq`) are never cast; compute precision is the trainer's (`bf16-mixed` = autocast, as under DDP);
  `param_dtype=bfloat16` all-gathers bf16 copies instead (half the traffic; gradients still reduced in fp32);
- the uniform module trace: the embedder is told to run every unit on every call (`Embedder.uniform_trace`),
  so that ranks all-gather the same units in the same order whatever their rows;
- checkpoints: sharded directories (torch.distributed.checkpoint, Lightning's layout with `meta.pt`) or one
  full file; a LoRA checkpoint holds the adapters only and loads into a model whose base came from model.path;
- the end of training: `standalone_module` gathers the full state dict so that rank 0 can save and score an
  unwrapped copy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.plugins.precision import HalfPrecision
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, load
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from .checkpoint_io import SHARDED_METADATA
from .settings import FSDP2_TARGET, refuse_true_precision  # noqa: F401  (FSDP2_TARGET: the configs' _target_)

log = logging.getLogger(__name__)

_PARAM_DTYPES = {None: None, "float32": torch.float32, "bfloat16": torch.bfloat16}


def layer_classes(module: nn.Module, names) -> set[type[nn.Module]]:
    """The classes among `module`'s submodules whose names are in `names` (must find at least one)."""
    names = set(names)
    found = {type(m) for m in module.modules() if type(m).__name__ in names}
    if not found:
        raise ValueError(f"no submodule of class {sorted(names)} in the model: FSDP has nothing to wrap")
    return found


def fsdp_units(embedder: nn.Module) -> list[nn.Module]:
    """The blocks that become FSDP units, outermost first (a block inside another block stays in its parent)."""
    classes = tuple(layer_classes(embedder, embedder.family.decoder_layer_classes))
    units: list[nn.Module] = []
    inside: set[int] = set()
    for module in embedder.modules():
        if id(module) in inside:
            continue
        if isinstance(module, classes):
            units.append(module)
            inside.update(id(m) for m in module.modules())
    return units


class FSDP2Strategy(ModelParallelStrategy):
    """FSDP2 over all ranks (a 1-D data-parallel mesh). Lightning's `ModelParallelStrategy` is used as it is,
    except that the mesh is always (all ranks) x 1 and the sharding is applied by `shard_module` (the module's
    `configure_model` calls it): Lightning refuses its FSDP1 strategy without GPUs, not this one, so `trainer=
    fsdp_cpu` runs the very code of `trainer=fsdp` on gloo.

    reshard_after_forward: free each unit's gathered weights after its forward (ZeRO-3; False keeps them until
        the backward: ZeRO-2-like, more memory, one all-gather fewer per unit).
    param_dtype: null (default) = each parameter's own dtype for compute, autocast from trainer.precision does
        the rest; `bfloat16` = FSDP all-gathers bf16 copies of the weights (half the traffic).
    state_dict_type: `sharded` (a directory per checkpoint, every rank writes its shard) or `full` (rank 0
        writes one file; fine for LoRA, heavy for full fine-tuning of a large model).
    """

    def __init__(self, reshard_after_forward: bool = True, param_dtype: str | None = None,
                 state_dict_type: str = "sharded", process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout):
        if state_dict_type not in ("sharded", "full"):
            raise ValueError(f"trainer.strategy.state_dict_type must be 'sharded' or 'full', got {state_dict_type!r}")
        if param_dtype not in _PARAM_DTYPES:
            raise ValueError(f"trainer.strategy.param_dtype must be null, float32 or bfloat16, got {param_dtype!r}")
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1,
                         save_distributed_checkpoint=state_dict_type == "sharded",
                         process_group_backend=process_group_backend, timeout=timeout)
        self.reshard_after_forward = bool(reshard_after_forward)
        self.param_dtype = _PARAM_DTYPES[param_dtype]
        self.state_dict_type = state_dict_type

    # ------------------------------------------------------------------ set-up
    def setup_environment(self) -> None:
        # Pure data parallelism: every rank of every node in one sharding dimension.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer) -> None:
        if isinstance(self.precision_plugin, HalfPrecision):
            refuse_true_precision(self.precision_plugin.precision)
        super().setup(trainer)

    def shard_module(self, module: nn.Module) -> None:
        """Called by the module's `configure_model`: `shard_embedding_module` over this strategy's ranks."""
        shard_embedding_module(module, self.device_mesh["data_parallel"], self.reshard_after_forward,
                               self.param_dtype)

    # ------------------------------------------------------------------ checkpoints
    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's load, except that a sharded checkpoint may lack weights the module reloads elsewhere
        (LoRA: the frozen base comes from model.path): only the tensors the checkpoint holds are read, and any
        other missing weight is an error naming it."""
        path = Path(self.broadcast(checkpoint_path))
        module = self.lightning_module
        if not (path.is_dir() and not module.strict_loading):
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        saved = {k.removeprefix("state_dict.") for k in FileSystemReader(path).read_metadata().state_dict_metadata
                 if k.startswith("state_dict.")}
        state = get_model_state_dict(self.model)
        allowed_missing = set(module.frozen_keys()) if hasattr(module, "frozen_keys") else set()
        missing = set(state) - saved - allowed_missing
        if missing:
            raise KeyError(f"checkpoint {path} lacks {len(missing)} trainable weight(s), e.g. {sorted(missing)[:3]}")
        wanted = {"state_dict": {k: v for k, v in state.items() if k in saved}}
        load(wanted, checkpoint_id=path)
        self.model.load_state_dict(wanted["state_dict"], strict=False)
        for i, optimizer in enumerate(self.optimizers):
            optim_state = {f"optimizer_{i}": get_optimizer_state_dict(self.model, optimizer)}
            load(optim_state, checkpoint_id=path)
            set_optimizer_state_dict(self.model, optimizer, optim_state_dict=optim_state[f"optimizer_{i}"],
                                     options=StateDictOptions(cpu_offload=True))
        log.info("sharded checkpoint %s: %d tensor(s) loaded, %d frozen weight(s) kept from model.path", path,
                 len(wanted["state_dict"]), len(set(state) - saved))
        return torch.load(path / SHARDED_METADATA, weights_only=weights_only)


def shard_embedding_module(module: nn.Module, mesh, reshard_after_forward: bool = True,
                           param_dtype: torch.dtype | None = None) -> None:
    """Apply FSDP2 to an EmbeddingModule in place over `mesh` (1-D): the family's blocks, then the embedder as the
    root unit, then the loss's parameters (a learnable temperature) as a root of their own, never cast. Gradients
    are reduce-scattered in fp32; the embedder then runs every unit on every call (`uniform_trace`). Idempotent."""
    embedder = module.embedder
    if isinstance(embedder, FSDPModule):
        return
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    # FSDP2 cannot shard 0-d parameters. The only ones in the families are CLIP's and SigLIP's logit scale and bias,
    # which embeddings never use (their gradient is None, under DDP too): they stay whole on every rank.
    scalars = {p for p in embedder.parameters() if p.ndim == 0}
    if scalars:
        log.info("FSDP leaves %d 0-d parameter(s) whole on every rank (unused by the embeddings: %s)", len(scalars),
                 sorted(n for n, p in embedder.named_parameters() if p.ndim == 0))
    for unit in fsdp_units(embedder):
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(embedder, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward,
                ignored_params=scalars or None)
    loss = getattr(module, "loss", None)
    if loss is not None and any(True for _ in loss.parameters()):
        fully_shard(loss, mesh=mesh, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
    embedder.uniform_trace = True


def full_state_dict(root: nn.Module) -> dict:
    """The full, unsharded state dict of an FSDP2-sharded module. Collective: every rank must call it; rank 0
    receives the tensors (on CPU), the other ranks an empty dict."""
    return get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_copy(module: nn.Module, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """A freshly built, unwrapped module of `module`'s class and hyperparameters holding `state` (every
    weight must match; the loss's own parameters, e.g. a learnable temperature, are left out: the copy
    is for saving and evaluating the embedder)."""
    fresh = type(module)(**module.hparams)
    weights = {k: v for k, v in state.items() if not k.startswith("loss.")}
    nn.Module.load_state_dict(fresh, weights, strict=True)
    return fresh


def is_sharded(module: nn.Module) -> bool:
    """Whether FSDP2 shards any part of `module`."""
    return any(isinstance(m, FSDPModule) for m in module.modules())


def standalone_module(trainer, module: nn.Module) -> nn.Module | None:
    """After `trainer.fit`: a module that rank 0 can save and evaluate on its own.

    Under FSDP the parameters are sharded across ranks, so neither a forward pass nor `save_pretrained`
    on rank 0 alone sees the model; every rank must call this (it gathers the full state dict, a
    collective) and rank 0 gets an unwrapped copy holding the trained weights, the other ranks None.
    Other strategies keep whole parameters on every rank: `module` itself."""
    if not is_sharded(module):
        return module
    state = full_state_dict(module)
    return unsharded_copy(module, state) if trainer.is_global_zero else None
