"""The Embedder: a backbone plus pooling (and optional L2 normalisation) that turns texts and
images into vectors, with the prompt formatting and processor call that go with it.

`Embedder.build(...)` loads from a hub id, a local directory or a config (random init);
`encode(texts, images)` is the inference API; `save_pretrained`/`from_pretrained` write and read a
directory that is an ordinary Hugging Face model directory (weights, config, tokenizer, image
processor) plus `embedder.json` (family, pooling, normalisation, prompt, truncation), loadable without any of
this repository's training code — and, through `embedders/saving.py`, also a sentence-transformers and vLLM
model with a model card.

`truncate_dim` keeps the first N dimensions of the pooled vector before the L2 normalisation (Matryoshka
embeddings): encoding, evaluation (`evaluate.py eval.dim=N`) and the shipped configs share it.

`pooling="multi_vector"` keeps one vector per token (late interaction, `embedders/multi_vector.py`): `forward` and
`encode` then return [B, L, dim] tensors whose all-zero rows are padding, `truncate_dim` cuts the token dimension,
and `model.multi_vector` (dim, similarity, skip_tokens) configures the head.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import BackboneFamily, get_family
from .dtypes import resolve_dtype
from .finetune import apply_finetuning
from .multi_vector import MultiVectorHead, cat_padded, head_config, resolve_skip_ids
from .multi_vector_saving import load_head_weights
from .packing import check_attention, dense_mask_warning, language_model, packed_sequences
from .pooling import MULTI_VECTOR, POOLING_MODES
from .prompts import PromptFormat, as_model_visual, format_text
from .saving import EMBEDDER_FILE, save_embedder
from .source_checks import (
    check_backbone_matches,
    check_model_path,
    check_saved_embedder,
    load_failure,
    raised_by_loader_library,
)

log = logging.getLogger(__name__)

#: 2: prompts record `image_layout` and `placeholder_without_image` (whose defaults changed: see `_upgrade_spec`).
FORMAT_VERSION = 2

@dataclass
class InputBuilder:
    """Formats texts with the prompt and calls the processor: picklable, for DataLoader workers."""

    family_name: str
    processor: Any
    prompt: PromptFormat
    max_length: int

    @property
    def family(self) -> BackboneFamily:
        return get_family(self.family_name)

    def format(self, texts: Sequence[str], images: Sequence[Any], side: str,
               instructions: Sequence[str | None] | None = None) -> list[str]:
        """`instructions`: each item's `Item.instruction` (None = none), for prompts that place it apart."""
        instructions = list(instructions) if instructions is not None else [None] * len(texts)
        if len(instructions) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(instructions)} instructions")
        return [format_text(t, im, side, self.prompt, self.family, ins)
                for t, im, ins in zip(texts, images, instructions)]

    def token_counts(self, texts: Sequence[str], images: Sequence[Any] | None, side: str,
                     instructions: Sequence[str | None] | None = None) -> list[int]:
        """The tokens the processor will give each row (before padding), without running it: the formatted text's
        tokens, each image's token expanded to the image's tokens for Qwen-style image processors (exact there;
        video frames are counted as images, an upper bound), the text's tokens alone for other processors; at most
        `max_length`. For ordering rows by length and filling token budgets (GradCache chunks)."""
        images = [as_model_visual(v, self.prompt) for v in images] if images is not None else [None] * len(texts)
        formatted = self.format(texts, images, side, instructions)
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        ids = tokenizer(formatted, add_special_tokens=False)["input_ids"]
        image_processor = getattr(self.processor, "image_processor", None)
        count = getattr(image_processor, "get_number_of_image_patches", None)
        merge = int(getattr(image_processor, "merge_size", 0) or 0) ** 2
        out = []
        for row, visual in zip(ids, images):
            extra = 0
            if count is not None and merge and visual is not None:
                frames = visual if isinstance(visual, (list, tuple)) else [visual]
                extra = sum(count(f.height, f.width, {}) // merge - 1 for f in frames if hasattr(f, "height"))
            out.append(min(len(row) + extra, self.max_length))
        return out

    def __call__(self, texts: Sequence[str], images: Sequence[Any] | None, side: str,
                 instructions: Sequence[str | None] | None = None) -> dict[str, torch.Tensor]:
        images = [as_model_visual(v, self.prompt) for v in images] if images is not None else [None] * len(texts)
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        return self.family.prepare(self.processor, self.format(texts, images, side, instructions), images,
                                   self.max_length)


class Embedder(nn.Module):
    """Backbone + pooling. `forward(inputs)` maps processor outputs to [B, d] embeddings."""

    def __init__(
        self,
        family: str,
        backbone: nn.Module,
        processor: Any,
        pooling: str | None = None,
        normalize: bool = True,
        prompt: PromptFormat | dict | str | None = None,
        max_length: int = 512,
        image: dict | None = None,
        truncate_dim: int | None = None,
        base_model: str | None = None,
        multi_vector: dict | None = None,
        packed: bool = False,
    ):
        super().__init__()
        self.family = get_family(family)
        self.pooling = pooling or self.family.default_pooling
        if self.pooling not in (*POOLING_MODES, "model"):
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {', '.join(POOLING_MODES)}")
        self.family.check_pooling(self.pooling)
        self.backbone = backbone
        self.normalize = bool(normalize)
        self.image = dict(image or {})
        self.family.bind(processor, backbone)  # what the collate step computes for the forward (M-RoPE positions)
        self.input_builder = InputBuilder(family, processor, PromptFormat.from_config(prompt), int(max_length))
        self.truncate_dim = _check_truncate_dim(truncate_dim)
        #: Where the backbone came from (hub id, local directory) or None for a random init; for the model card.
        self.base_model = base_model
        #: The multi-vector head (pooling=multi_vector), else None; `model.multi_vector` is ignored for other poolings.
        self.head: MultiVectorHead | None = None
        self.head_config: dict | None = None
        if self.pooling == MULTI_VECTOR:
            self.head_config = head_config(multi_vector)
            tokenizer = getattr(processor, "tokenizer", processor)
            cfg = self.head_config
            self.head = MultiVectorHead(_hidden_size(backbone), cfg["dim"], cfg["similarity"],
                                        resolve_skip_ids(tokenizer, cfg["skip_tokens"]), cfg["bias"])
        #: Run every tower on every call (set by the FSDP strategy: ranks must run the same units in the same
        #: order); towers without rows run on a dummy input whose output enters the embeddings times 0.
        self.uniform_trace = False
        #: Towers that calls with gradients used for real since the last optimizer step (under `uniform_trace`).
        self.real_towers: set[str] = set()
        self._dummies: dict[tuple[str, str], dict] = {}
        #: Run the decoder on the rows packed without padding (`embedders/packing.py`): the same embeddings, less
        #: work on padding. A runtime choice, not saved in embedder.json (see `spec`).
        self.packed = bool(packed)
        if self.packed:
            if self.family.packed_positions is None:
                raise ValueError(f"model.packed=true: family {self.family.name!r} cannot run packed rows (only the "
                                 "decoder families qwen2_vl, qwen3_vl, llava_onevision can); set model.packed=false")
            warning = dense_mask_warning(check_attention(language_model(backbone), self.family.name))
            if warning:
                log.warning(warning)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        family: str,
        path: str | None = None,
        config: dict | None = None,
        pooling: str | None = None,
        normalize: bool = True,
        prompt: PromptFormat | dict | str | None = None,
        max_length: int = 512,
        dtype: str | torch.dtype | None = None,
        image: dict | None = None,
        lora: dict | None = None,
        freeze_vision: bool = False,
        gradient_checkpointing: bool = False,
        truncate_dim: int | None = None,
        base_model: str | None = None,
        multi_vector: dict | None = None,
        packed: bool = False,
        attn_implementation: str | None = None,
    ) -> Embedder:
        """Load (path: hub id or local dir) or randomly initialise (config) a backbone of `family`.
        `base_model` (for the model card) defaults to `path`. `attn_implementation` (eager, sdpa, flash_attention_2,
        …; None = transformers' default) is set on the loaded backbone, a runtime choice like `packed`."""
        fam = get_family(family)
        if path is None and config is None:
            raise ValueError(f"model.path (hub id or local directory) or model.config (random init) is required "
                             f"for family {family!r}")
        if path is not None:
            path = str(path)
            check_model_path(path)  # a wrong path is named at once (not after huggingface_hub's network retries)
        backbone = fam.load_model(path, dict(config) if config is not None and path is None else None,
                                  resolve_dtype(dtype))
        if attn_implementation is not None:
            if not hasattr(backbone, "set_attn_implementation"):
                raise ValueError(f"model.attn_implementation={attn_implementation!r}: the {family} backbone "
                                 f"({type(backbone).__name__}) cannot switch its attention; set it to null")
            backbone.set_attn_implementation(attn_implementation)
        processor = fam.load_processor(path, config, image)
        backbone = apply_finetuning(backbone, fam, lora=lora, freeze_vision=freeze_vision,
                                    gradient_checkpointing=gradient_checkpointing)
        embedder = cls(family, backbone, processor, pooling, normalize, prompt, max_length, image, truncate_dim,
                       base_model if base_model is not None else path, multi_vector, packed)
        if embedder.head is not None and path is not None:
            # A saved multi-vector Embedder carries its head; a plain backbone starts with a random one.
            load_head_weights(embedder.head, path)
        return embedder

    # ------------------------------------------------------------------ inference
    @property
    def processor(self):
        return self.input_builder.processor

    @property
    def prompt(self) -> PromptFormat:
        return self.input_builder.prompt

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        scope = (packed_sequences(self.backbone, self.family.packed_positions, self.family.name) if self.packed
                 else nullcontext())
        with scope:
            if self.uniform_trace and self.family.towers:
                emb = self.family.encode_uniform(self.backbone, inputs, self.pooling, self.dummy_inputs)
                if torch.is_grad_enabled():
                    self.real_towers |= self.family.towers_in(inputs)
            else:
                emb = self.family.encode_inputs(self.backbone, inputs, self.pooling)
        if self.head is not None:  # [B, T, H] token states → [B, T, dim] unit token vectors, unscored rows zero
            return self.head(emb, inputs["attention_mask"], inputs.get("input_ids"), self.truncate_dim)
        if self.truncate_dim is not None:
            if self.truncate_dim > emb.shape[-1]:
                raise ValueError(f"truncate_dim={self.truncate_dim} exceeds the embedding dimension {emb.shape[-1]} "
                                 f"of this {self.family.name} model; use a value ≤ {emb.shape[-1]} or null")
            emb = emb[..., : self.truncate_dim]
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    def dummy_inputs(self, tower: str) -> dict[str, torch.Tensor]:
        """The family's dummy input for `tower` (processor outputs of one tiny row), on this Embedder's device."""
        device = self.device
        key = (tower, str(device))
        if key not in self._dummies:
            inputs = self.family.dummy_inputs(self.processor, tower, self.input_builder.max_length)
            self._dummies[key] = move_to(inputs, device)
        return self._dummies[key]

    def truncated(self, dim: int | None) -> Embedder:
        """An Embedder sharing this one's weights whose embeddings keep their first `dim` dimensions (re-normalised);
        None returns this Embedder itself. This one is left as it is."""
        if dim is None:
            return self
        out = copy.copy(self)  # a new attribute dict; modules and parameters shared
        out.truncate_dim = _check_truncate_dim(dim)
        log.info("embeddings truncated to their first %d dimensions%s", out.truncate_dim,
                 " and re-normalised" if self.normalize else "")
        return out

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(
        self,
        texts: Sequence[str],
        images: Sequence[Any] | None = None,
        side: str = "query",
        batch_size: int = 32,
        progress: bool = False,
        instructions: Sequence[str | None] | None = None,
    ) -> torch.Tensor:
        """Embed texts (with optional PIL images, None where a row has none) → float32 [N, d] on CPU.
        `instructions`: per text its task instruction held inside it (`Item.instruction`), for prompts that place
        it apart (`prompt.instruction_as_system`); None = none."""
        images = list(images) if images is not None else [None] * len(texts)
        if len(images) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(images)} images")
        instructions = list(instructions) if instructions is not None else [None] * len(texts)
        if len(instructions) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(instructions)} instructions")
        was_training = self.training
        self.eval()
        out = []
        starts = range(0, len(texts), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"encode {side}", unit="batch")
        try:
            for s in starts:
                inputs = self.input_builder(texts[s : s + batch_size], images[s : s + batch_size], side,
                                            instructions[s : s + batch_size])
                out.append(self(move_to(inputs, self.device)).float().cpu())
        finally:
            self.train(was_training)
        if not out:
            return torch.empty(0, 0)
        return cat_padded(out)

    # ------------------------------------------------------------------ persistence
    def spec(self) -> dict:
        # `packed` is left out: it computes the same embeddings, and whether it runs depends on where the directory
        # is loaded (the attention implementation); pass packed=True to from_pretrained to use it there.
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family.name,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "prompt": self.prompt.to_dict(),
            "max_length": self.input_builder.max_length,
            "image": self.image,
            "truncate_dim": self.truncate_dim,
            "base_model": self.base_model,
            **({"multi_vector": self.head_config} if self.head is not None else {}),
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a standalone directory (LoRA merged) that embedlab, transformers, sentence-transformers and vLLM
        load (embedders/saving.py); `shipping.save_embedder` adds the Hub model card."""
        return save_embedder(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: str | torch.dtype | None = None, **overrides) -> Embedder:
        """The Embedder saved in `directory`. A wrong or damaged directory raises `ModelSourceError` naming the file
        and what to do (embedders/source_checks.py), before or instead of transformers' own errors."""
        directory = Path(directory)
        spec = check_saved_embedder(directory)
        stored_values = spec.pop("_stored_values")
        spec = _upgrade_spec(spec, directory / EMBEDDER_FILE)
        # Directories saved before the base model was recorded name themselves.
        spec["base_model"] = spec.get("base_model") or str(directory)
        spec.update(overrides)
        try:
            embedder = cls.build(path=str(directory), dtype=dtype, **spec)
        except Exception as err:
            if not raised_by_loader_library(err):
                raise
            raise load_failure(directory, err) from err
        if not spec.get("lora"):  # adapters added by an override are not in the files
            check_backbone_matches(embedder.backbone, stored_values, directory)
        return embedder


def _upgrade_spec(spec: dict, path: Path) -> dict:
    """The spec of a saved Embedder in today's terms, so that an older directory formats its inputs exactly as
    it did when it was saved (and trained)."""
    version = spec.pop("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r} was written by a newer embedlab than this one "
                         f"(which reads up to {FORMAT_VERSION}); upgrade embedlab to load it")
    prompt = spec.get("prompt")
    if version < 2 and isinstance(prompt, dict):
        # Version 1 had no layout settings: plain prompts used the family's bare image token, chat prompts its
        # wrapped one, and a placeholder without an image was an error. Today's defaults differ (wrapped, kept).
        prompt = dict(prompt)
        prompt.setdefault("image_layout", "wrapped" if prompt.get("chat") else "bare")
        prompt.setdefault("placeholder_without_image", "error")
        spec["prompt"] = prompt
    return spec


def _hidden_size(backbone) -> int:
    config = backbone.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def _check_truncate_dim(dim) -> int | None:
    if dim is None:
        return None
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"truncate_dim (eval.dim) must be a positive integer or null, got {dim!r}")
    return dim


def move_to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
