"""How a multi-vector Embedder's head is written into (and read from) the saved directory, in sentence-transformers'
`MultiVectorEncoder` layout, so the one directory loads in embedlab and in `MultiVectorEncoder(dir)`:

    modules.json: Transformer → Dense (1_Dense: the projection, identity activation, on `token_embeddings`)
                  → Normalize (2_Normalize, on `token_embeddings`) → MultiVectorMask (3_MultiVectorMask: the
                  `skip_tokens` as its skiplist, on both sides)
    config_sentence_transformers.json: model_type MultiVectorEncoder, similarity_fn_name maxsim | meanmaxsim

The projection's weights live once, in `1_Dense/model.safetensors` (keys `linear.weight`, `linear.bias`), which
`Embedder.from_pretrained` reads back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from .multi_vector import MultiVectorHead

log = logging.getLogger(__name__)

HEAD_DIR = "1_Dense"
HEAD_WEIGHTS = "model.safetensors"
ST_DENSE = "sentence_transformers.base.modules.dense.Dense"
ST_NORMALIZE = "sentence_transformers.base.modules.normalize.Normalize"
ST_MASK = "sentence_transformers.multi_vector_encoder.modules.multi_vector_mask.MultiVectorMask"


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_head(head: MultiVectorHead, directory: Path) -> None:
    """The projection as a sentence-transformers Dense module directory."""
    from safetensors.torch import save_file

    folder = Path(directory) / HEAD_DIR
    _write_json(folder / "config.json", {
        "in_features": head.proj.in_features, "out_features": head.proj.out_features, "bias": head.proj.bias is not None,
        "activation_function": "torch.nn.modules.linear.Identity",
        "module_input_name": "token_embeddings", "module_output_name": "token_embeddings"})
    state = {"linear.weight": head.proj.weight.detach().float().contiguous().cpu()}
    if head.proj.bias is not None:
        state["linear.bias"] = head.proj.bias.detach().float().contiguous().cpu()
    save_file(state, str(folder / HEAD_WEIGHTS))


def load_head_weights(head: MultiVectorHead, path: str) -> None:
    """Load the head saved in directory `path`. A saved multi-vector Embedder must carry one; any other path (a hub id
    or directory of a plain backbone) starts the head from its random initialisation, which is logged."""
    local = Path(path)
    weights = local / HEAD_DIR / HEAD_WEIGHTS
    if weights.is_file():
        from safetensors.torch import load_file

        state = load_file(str(weights))
        own = {"linear.weight": head.proj.weight, "linear.bias": head.proj.bias}
        for key, param in own.items():
            if param is None:
                continue
            if key not in state or tuple(state[key].shape) != tuple(param.shape):
                raise ValueError(f"{weights}: {key} is missing or has shape "
                                 f"{tuple(state[key].shape) if key in state else None}, the head expects "
                                 f"{tuple(param.shape)} (model.multi_vector.dim must match the saved model)")
            with torch.no_grad():
                param.copy_(state[key].to(param.dtype))
        return
    if local.is_dir() and (local / "embedder.json").is_file():
        spec = json.loads((local / "embedder.json").read_text())
        if spec.get("pooling") == "multi_vector":
            raise FileNotFoundError(f"{local} is a saved multi-vector Embedder without its head ({HEAD_DIR}/"
                                    f"{HEAD_WEIGHTS}); the directory is incomplete: save it again")
    log.info("multi-vector head: %s holds none, the projection starts from its random initialisation", path)


def multi_vector_modules(embedder, directory: Path) -> list[dict]:
    """Write the head's sentence-transformers modules (after the Transformer, which the caller writes) and return
    the modules.json entries."""
    head = embedder.head
    save_head(head, directory)
    modules = [{"idx": 1, "name": "1", "path": HEAD_DIR, "type": ST_DENSE},
               {"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE}]
    _write_json(Path(directory) / "2_Normalize" / "config.json",
                {"module_input_name": "token_embeddings", "module_output_name": "token_embeddings"})
    tokenizer = getattr(embedder.processor, "tokenizer", embedder.processor)
    skip = [str(t) for t in tokenizer.convert_ids_to_tokens(head.skip_ids.tolist())] if head.skip_ids.numel() else []
    _write_json(Path(directory) / "3_MultiVectorMask" / "config.json",
                {"skiplist_words": skip, "skiplist_tasks": ["query", "document"], "keep_only_token_ids": None})
    modules.append({"idx": 3, "name": "3", "path": "3_MultiVectorMask", "type": ST_MASK})
    return modules
