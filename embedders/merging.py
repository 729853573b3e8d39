"""Model merging by weight averaging (METHODS §11; Qwen3-VL-Embedding merges its distilled model with the stage-2
model to recover classification and QA): θ = Σ_k w_k θ_k over compatible Embedders, Σ_k w_k = 1.

Sources are saved Embedder directories or training checkpoints. LoRA runs are merged into their base first, so for
LoRA runs of one base the result is base + Σ_k w_k ΔW_k (ΔW_k = s · B_k A_k, each run's adapter delta): the average of
the adapters' effects, which averaging the A and B matrices separately would not give. Compatibility is checked
before anything is averaged, and a refusal names the sources and what differs: the embedding spec (family, pooling,
normalisation, prompt, max length, image settings, truncation), the backbone architecture (config.json), the
tokenizer vocabulary, the weight names and shapes. Tensors equal in every source are copied (a frozen vision tower,
a merge of a model with itself: exactly that model); others are averaged in fp64 and stored in the first source's
dtype. The result is an ordinary Embedder (`save_pretrained`, `evaluate.py embedder_dir=`).

    python export.py --merge RUN_A/embedder RUN_B/embedder --weights 0.5,0.5 --out merged
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from .checkpoint_io import is_sharded_checkpoint, load_trained_module
from .embedder import EMBEDDER_FILE, Embedder
from .finetune import is_peft_model

#: Spec fields that must agree for a merge: the merged model formats and pools exactly as each source did.
SPEC_FIELDS = ("family", "pooling", "normalize", "prompt", "max_length", "image", "truncate_dim")
#: config.json entries that name or stamp a checkpoint rather than describe its architecture.
_CONFIG_NOISE = {"_name_or_path", "name_or_path", "architectures", "transformers_version", "torch_dtype", "dtype",
                 "_commit_hash", "_attn_implementation_autoset", "output_hidden_states"}
MERGE_FILE = "merge.json"


class IncompatibleModelsError(ValueError):
    """Sources that cannot be averaged into one model."""


def load_merge_source(path: str | Path) -> Embedder:
    """The Embedder of a saved Embedder directory or of a training checkpoint (file or sharded directory)."""
    path = Path(path)
    if path.is_dir() and (path / EMBEDDER_FILE).is_file():
        return Embedder.from_pretrained(path)
    if path.is_file() or is_sharded_checkpoint(path):
        return load_trained_module(path).embedder
    raise FileNotFoundError(f"{path} is neither a saved Embedder directory (with {EMBEDDER_FILE}) nor a training "
                            "checkpoint; pass <run>/embedder or <run>/checkpoints/last.ckpt")


def check_weights(weights: Sequence[float], count: int) -> list[float]:
    weights = [float(w) for w in weights]
    if len(weights) != count:
        raise ValueError(f"{count} models to merge but {len(weights)} weights; give one weight per model "
                         "(e.g. --weights 0.5,0.5)")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"merge weights must be finite and non-negative, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"merge weights sum to {sum(weights):g}; a weight average needs them to sum to 1 "
                         f"(e.g. {[round(w / sum(weights), 6) for w in weights] if sum(weights) else '0.5,0.5'})")
    return weights


def full_backbone(embedder: Embedder) -> torch.nn.Module:
    """The backbone with any LoRA adapters merged into its weights (a copy; the embedder is left as it is)."""
    if is_peft_model(embedder.backbone):
        return copy.deepcopy(embedder.backbone).merge_and_unload()
    return embedder.backbone


def _architecture(backbone: torch.nn.Module) -> dict:
    config = backbone.config.to_dict()

    def clean(d):
        return {k: clean(v) if isinstance(v, dict) else v for k, v in d.items() if k not in _CONFIG_NOISE}

    return clean(config)


def _vocab(embedder: Embedder) -> dict | None:
    tokenizer = getattr(embedder.processor, "tokenizer", embedder.processor)
    return tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else None


def check_compatible(embedders: Sequence[Embedder], names: Sequence[str],
                     backbones: Sequence[torch.nn.Module]) -> None:
    """Raise IncompatibleModelsError naming the first source that differs from the first one, and how."""
    first, first_spec = names[0], embedders[0].spec()
    arch, vocab = _architecture(backbones[0]), _vocab(embedders[0])
    state = {k: (tuple(v.shape), v.dtype.is_floating_point) for k, v in backbones[0].state_dict().items()}
    for name, emb, backbone in zip(names[1:], embedders[1:], backbones[1:]):
        spec = emb.spec()
        for field in SPEC_FIELDS:
            if spec.get(field) != first_spec.get(field):
                raise IncompatibleModelsError(f"cannot merge {name} into {first}: their {field} differs "
                                              f"({first_spec.get(field)!r} vs {spec.get(field)!r})")
        other = _architecture(backbone)
        if other != arch:
            keys = sorted(k for k in set(arch) | set(other) if arch.get(k) != other.get(k))
            raise IncompatibleModelsError(f"cannot merge {name} into {first}: their architectures differ in "
                                          f"config.json {keys[:5]} ({[arch.get(k) for k in keys[:3]]} vs "
                                          f"{[other.get(k) for k in keys[:3]]})")
        if _vocab(emb) != vocab:
            raise IncompatibleModelsError(f"cannot merge {name} into {first}: their tokenizers' vocabularies differ")
        other_state = {k: (tuple(v.shape), v.dtype.is_floating_point) for k, v in backbone.state_dict().items()}
        if other_state != state:
            diff = sorted(set(state) ^ set(other_state)) or \
                [k for k in state if state[k] != other_state[k]]
            raise IncompatibleModelsError(f"cannot merge {name} into {first}: their weights differ in names or shapes, "
                                          f"e.g. {diff[:3]}")


def merge_embedders(embedders: Sequence[Embedder], weights: Sequence[float],
                    names: Sequence[str] | None = None) -> Embedder:
    """θ = Σ_k w_k θ_k of compatible Embedders (LoRA merged into each first); returns a new Embedder."""
    if len(embedders) < 2:
        raise ValueError("merging needs at least two models")
    names = list(names) if names is not None else [f"model {i}" for i in range(len(embedders))]
    weights = check_weights(weights, len(embedders))
    backbones = [full_backbone(e) for e in embedders]
    check_compatible(embedders, names, backbones)
    states = [b.state_dict() for b in backbones]
    merged = {}
    for key, first in states[0].items():
        tensors = [s[key] for s in states]
        if all(torch.equal(first, t) for t in tensors[1:]):
            merged[key] = first.clone()
        elif not first.is_floating_point():
            raise IncompatibleModelsError(f"cannot merge: the non-float tensor {key} differs between "
                                          f"{names[0]} and {names[next(i for i, t in enumerate(tensors) if not torch.equal(first, t))]}")
        else:
            total = sum(w * t.detach().to(torch.float64) for w, t in zip(weights, tensors))
            merged[key] = total.to(first.dtype)
    base = embedders[0]
    backbone = copy.deepcopy(backbones[0])
    backbone.load_state_dict(merged)
    spec = base.spec()
    return Embedder(spec["family"], backbone, base.processor, spec["pooling"], spec["normalize"], spec["prompt"],
                    spec["max_length"], spec["image"], spec["truncate_dim"], base.base_model)


def merge_and_save(sources: Sequence[str | Path], weights: Sequence[float], out_dir: str | Path,
                   dtype: torch.dtype | None = None) -> Path:
    """Load `sources`, merge them with `weights`, save the result as an Embedder directory with a merge.json."""
    weights = check_weights(weights, len(sources))
    embedders = [load_merge_source(s) for s in sources]
    merged = merge_embedders(embedders, weights, [str(s) for s in sources])
    if dtype is not None:
        merged = merged.to(dtype)
    path = merged.save_pretrained(out_dir)
    record = {"method": "weight average", "sources": [str(Path(s).resolve()) for s in sources], "weights": weights}
    (Path(path) / MERGE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return Path(path)
