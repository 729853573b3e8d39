"""Backbone families (base class and registry): how to load a model and its processor, turn inputs into one vector, and
what a family needs elsewhere (image token, chat layout, LoRA targets, decoder layers for FSDP).

A family is a small class registered in `FAMILIES`. Adding one (Qwen3-VL, InternVL, …) means
subclassing `BackboneFamily`, filling in its class attributes and `load_model`/`load_processor`/
`encode_inputs`/`prepare`, and adding a `conf/model/*.yaml` (see the README).
"""

from __future__ import annotations

import importlib.util
import json
import math
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
    #: `config.json` model types this family loads; a checkpoint of another type is refused by name.
    model_types: tuple[str, ...] = ()
    takes_images: bool = False
    #: What the MMEB placeholder becomes in the prompt's `bare` image layout (reference-code convention).
    image_token: str | None = None
    #: The wrapped form (the model's own chat-template convention, e.g. `<|vision_start|><|image_pad|><|vision_end|>`):
    #: used in the `wrapped` image layout, the default (`embedders/prompts.py`).
    chat_image_token: str | None = None
    #: How a text holding `<|image_1|>` without an image is rendered when the prompt does not say
    #: (`embedders/prompts.py`): `literal` keeps the placeholder as plain text (LLaVE), `image_token` puts the
    #: family's image token there, embedded as an ordinary token (VLM2Vec v1, Gen2Embed), `strip` removes it.
    placeholder_without_image: str = "literal"
    #: Whether a text-only row may carry the image token as an ordinary token (`placeholder_without_image:
    #: image_token`): the family must then keep such tokens out of the image-feature scatter.
    embeds_stray_image_tokens: bool = False
    #: Whether image tokens get image positions only after the wrapped form's opening token (Qwen2-VL's reference
    #: rule) rather than by token id as stock transformers does: the `bare` layout then ships with a documented
    #: difference (`embedders/saving.py`).
    reference_image_positions: bool = False
    #: Whether the family takes videos (`<|video_1|>` becomes `video_token`, or `chat_video_token` in the wrapped
    #: layout); video eval datasets are skipped (and listed) for families that do not.
    takes_videos: bool = False
    video_token: str | None = None
    chat_video_token: str | None = None
    #: Images (document pages) one item may carry.
    max_images_per_item: int = 1
    default_pooling: str = "last"
    #: Pooling modes the family supports ("model" = the model's own pooling head, e.g. dual encoders).
    pooling_modes: tuple[str, ...] = ("last", "mean", "cls")
    #: Whether `encode_inputs` pools the last hidden state with `pooling.pool`, so that `pooling=multi_vector` keeps
    #: every token state for the multi-vector head (`embedders/multi_vector.py`).
    multi_vector: bool = True
    padding_side: str = "right"
    #: Module-name suffixes that LoRA adapts by default.
    lora_target_modules: tuple[str, ...] = ()
    #: Class names of the repeated blocks (FSDP auto-wrap, activation checkpointing).
    decoder_layer_classes: tuple[str, ...] = ()
    #: Attribute path of the vision tower inside the loaded model (frozen with freeze_vision).
    vision_module: str | None = None
    #: Towers that a batch may leave unused, each named by the segments of its parameter names in the backbone,
    #: in the order a forward runs them. Under FSDP every call must run every unit (ranks all-gather the same
    #: units in the same order), so a tower without input rows runs on a dummy input whose output enters the
    #: embeddings multiplied by 0 (`encode_uniform`); a tower no rank used for real gets no gradient (`Embedder`).
    towers: dict[str, tuple[str, ...]] = {}
    #: Processor outputs that `touch_tower` passes to the model's `get_image_features`.
    image_feature_keys: tuple[str, ...] = ("pixel_values",)
    #: How the language model takes positions when its rows run packed (`model.packed`, `embedders/packing.py`):
    #: "mrope" (Qwen-VL: M-RoPE plus a text row), "rope" (1-D), None = the family cannot pack.
    packed_positions: str | None = None

    def load_model(self, path: str | None, config: dict | None, dtype: torch.dtype | None) -> nn.Module:
        raise NotImplementedError

    def load_processor(self, path: str | None, config: dict | None, image: dict | None) -> Any:
        raise NotImplementedError

    def bind(self, processor, model: nn.Module) -> None:
        """Give the processor what `prepare` needs of the model to compute inputs on the host (in the collate step,
        not on the device in the forward): nothing by default; Qwen-VL families attach their M-RoPE index."""

    def prepare(self, processor, texts: list[str], images: list, max_length: int) -> dict[str, torch.Tensor]:
        """Tokenise formatted texts (and their images) into model inputs."""
        raise NotImplementedError

    def encode_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor], pooling: str) -> torch.Tensor:
        """Model inputs → one (unnormalised) vector per row."""
        out = model(**inputs)
        return pool(out.last_hidden_state, inputs["attention_mask"], pooling)

    # ------------------------------------------------------------------ uniform module trace (FSDP)
    def towers_in(self, inputs: dict[str, Any]) -> set[str]:
        """The towers that `inputs` use for real (host-side: read from which keys are present)."""
        if "vision" in self.towers and any(k in inputs for k in ("pixel_values", "pixel_values_videos")):
            return {"vision"}
        return set()

    def dummy_inputs(self, processor, tower: str, max_length: int) -> dict[str, torch.Tensor]:
        """Processor outputs of one small input for `tower` (a gray image for a vision tower)."""
        from PIL import Image

        if tower != "vision":
            raise ValueError(f"family {self.name!r} has no dummy input for tower {tower!r}")
        return self.prepare(processor, [self.image_token or ""], [Image.new("RGB", (64, 64), (128, 128, 128))],
                            max_length)

    def touch_tower(self, model: nn.Module, tower: str, dummy: dict[str, torch.Tensor]) -> torch.Tensor:
        """A scalar computed by `tower` from `dummy` through exactly the parameters that real inputs reach (the
        features the language model consumes, nothing more: a weight that only the dummy touched would get a
        gradient on some ranks and none on others)."""
        if tower != "vision":
            raise ValueError(f"family {self.name!r} cannot run tower {tower!r} on a dummy input")
        out = model.get_image_features(**{k: dummy[k] for k in self.image_feature_keys})
        return sum_features(out)

    def encode_uniform(self, model: nn.Module, inputs: dict[str, torch.Tensor], pooling: str,
                       dummy) -> torch.Tensor:
        """`encode_inputs`, running every tower: the towers the rows leave unused run first (they precede the
        decoder, as real visual inputs do) on `dummy(tower)`, and their output is added times 0."""
        touch = None
        used = self.towers_in(inputs)
        for tower in self.towers:
            if tower not in used:
                dummy_inputs = dummy(tower)
                with untouched_rng(dummy_inputs["input_ids"].device):
                    value = self.touch_tower(model, tower, dummy_inputs)
                touch = value if touch is None else touch + value
        emb = self.encode_inputs(model, inputs, pooling)
        return emb if touch is None else emb + 0.0 * touch.to(emb.dtype)

    def chat(self, system: str | None, user: str, assistant: str | None = None) -> str:
        """The chat layout: system turn (when given), user turn, then the assistant turn — the generation prompt
        when `assistant` is None, else a closed turn with that content (LLaVE closes it with "\n")."""
        raise ValueError(f"family {self.name!r} has no chat layout; use prompt=plain")

    @property
    def has_chat(self) -> bool:
        return type(self).chat is not BackboneFamily.chat

    def check_pooling(self, pooling: str) -> None:
        if pooling == "multi_vector" and self.multi_vector:
            return
        if pooling not in self.pooling_modes:
            own = " ('model' = the model's own heads)" if "model" in self.pooling_modes else ""
            raise ValueError(f"family {self.name!r} supports pooling {list(self.pooling_modes)}{own}, got {pooling!r}; "
                             "leave model.pooling null for the family's default")

    def save_processor(self, processor, directory: Path) -> None:
        processor.save_pretrained(str(directory))


def cast_weights(model: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """`model` with its floating-point parameters in `dtype` and its buffers as they are — what `from_pretrained(...,
    dtype=...)` gives (RoPE's `inv_freq` is built in fp32 and stays so; `model.to(dtype)` would round it, moving every
    position's angle by up to ~p·θ·2⁻⁹). For the randomly initialised models built from a config."""
    if dtype is not None:
        for p in model.parameters():
            if p.is_floating_point():
                p.data = p.data.to(dtype)
    return model


def untouched_rng(device: torch.device):
    """A scope whose random draws (dropout in a dummy pass) leave the CPU and `device`'s generators as they were, so
    that the real rows draw the masks they would draw without the dummy."""
    cuda = [device] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=cuda, enabled=True, device_type="cuda")


def sum_features(output) -> torch.Tensor:
    """The sum of the visual features a `get_image_features` call returns for the language model: its pooled
    output (per-image tensors) and any DeepStack features; older transformers return the tensors directly."""
    parts = []

    def collect(value):
        if isinstance(value, torch.Tensor):
            parts.append(value.float().sum())
        elif isinstance(value, (list, tuple)):
            for v in value:
                collect(v)

    if hasattr(output, "pooler_output"):
        collect(output.pooler_output)
        collect(getattr(output, "deepstack_features", None))
    else:
        collect(output)
    if not parts:
        raise ValueError(f"get_image_features returned no tensor ({type(output).__name__})")
    return torch.stack(parts).sum()


def processor_inputs(processor, texts, images, max_length: int | None = None) -> dict:
    """Model inputs for formatted texts and their images (None where a row has none).

    Rows with an image go through the multimodal processor (image-token expansion), text-only rows through its
    tokenizer alone — so a text-only row may hold an image token as an ordinary token without taking another
    row's image. Then every row longer than `max_length` loses *text* tokens only, on the tokenizer's
    `truncation_side` (the reference processors truncate on that side too, but through the image tokens, which
    then no longer match the image); a row whose image tokens alone exceed `max_length` is refused, naming its
    batch row. The rows are padded together on the tokenizer's padding side. Image outputs (`pixel_values`,
    `image_grid_thw`, `image_sizes`, …) are the processor's, in batch order; `mm_token_type_ids` is rebuilt
    for the padded rows when the processor makes it."""
    import torch

    tokenizer = processor.tokenizer
    image_idx = [i for i, im in enumerate(images) if im is not None]
    text_idx = [i for i, im in enumerate(images) if im is None]
    rows: list[list[int] | None] = [None] * len(texts)
    extra: dict = {}
    if image_idx:
        out = dict(processor(text=[texts[i] for i in image_idx], images=[images[i] for i in image_idx],
                             padding=True, return_tensors="pt"))
        for j, i in enumerate(image_idx):
            rows[i] = out["input_ids"][j][out["attention_mask"][j].bool()].tolist()
        extra = {k: v for k, v in out.items()
                 if k not in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")}
    if text_idx:
        enc = tokenizer([texts[i] for i in text_idx], padding=False, truncation=False)
        for j, i in enumerate(text_idx):
            rows[i] = list(enc["input_ids"][j])
    if max_length is not None:
        keep = set(_token_ids(processor, "image_token_ids")) | set(_token_ids(processor, "video_token_ids"))
        side = getattr(tokenizer, "truncation_side", "right")
        rows = [truncate_text_tokens(r, int(max_length), keep, side, row=i) for i, r in enumerate(rows)]
    batch = dict(tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt"))
    batch = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    if getattr(processor, "return_mm_token_type_ids", False) and hasattr(processor, "create_mm_token_type_ids"):
        batch["mm_token_type_ids"] = torch.tensor(processor.create_mm_token_type_ids(batch["input_ids"].tolist()))
    return {**batch, **extra}


def _token_ids(processor, attribute: str) -> list[int]:
    try:
        ids = getattr(processor, attribute)
    except (AttributeError, ValueError):
        return []
    return [int(i) for i in (ids or []) if i is not None]


def truncate_text_tokens(ids: list[int], max_length: int, keep: set[int], side: str = "right",
                         row: int | None = None) -> list[int]:
    """`ids` cut to `max_length` by dropping text tokens (ids not in `keep`) from the `side` end; tokens in `keep`
    (image/video slots) always stay. Raises ValueError when the kept tokens alone exceed `max_length`."""
    if len(ids) <= max_length:
        return ids
    fixed = sum(1 for t in ids if t in keep)
    if fixed > max_length:
        raise ValueError(f"batch row {row}: its image takes {fixed} tokens, more than model.max_length={max_length}: "
                         "raise model.max_length or lower the image resolution (model.image.max_pixels)")
    drop = len(ids) - max_length
    order = range(len(ids) - 1, -1, -1) if side == "right" else range(len(ids))
    removed = set()
    for pos in order:
        if len(removed) == drop:
            break
        if ids[pos] not in keep:
            removed.add(pos)
    return [t for pos, t in enumerate(ids) if pos not in removed]


#: Resampling filters by name (PIL constants), for `model.image.resize`.
RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}


def check_resize(policy) -> dict | None:
    """Validate a `model.image.resize` setting: null, `{mode: fixed, size: [w, h], resample: bicubic}` (VLM2Vec
    v1's "high" = 1344 x 1344; with `below: n`, only images with a side shorter than n px, VLM2Vec-V2's 56 x 56 for
    sides under 28) or `{mode: clamp, max_aspect: 2, min_side: 336, max_side: 992, resample: lanczos}`
    (Gen2Embed's "random" policy) or `{mode: smart, factor: 28, min_pixels: 3136, max_pixels: 12845056}`
    (qwen-vl-utils' `fetch_image`: sides rounded to the factor within the pixel budget, as GME's wrapper resizes
    before its processor). Returns it as a plain dict."""
    if policy is None:
        return None
    policy = dict(policy)
    mode = policy.get("mode")
    known = {"fixed": {"mode", "size", "resample", "below"}, "clamp": {"mode", "max_aspect", "min_side", "max_side", "resample"},
             "smart": {"mode", "factor", "min_pixels", "max_pixels", "resample"}}
    if mode not in known:
        raise ValueError(f"model.image.resize.mode must be one of {sorted(known)}, got {mode!r}")
    unknown = set(policy) - known[mode]
    if unknown:
        raise ValueError(f"model.image.resize has unknown key(s) {sorted(unknown)} for mode {mode}; known: "
                         f"{sorted(known[mode])}")
    if policy.setdefault("resample", "bicubic") not in RESAMPLE:
        raise ValueError(f"model.image.resize.resample must be one of {sorted(RESAMPLE)}, got {policy['resample']!r}")
    if mode == "fixed":
        size = policy.get("size")
        if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise ValueError(f"model.image.resize.size must be [width, height] in pixels, got {size!r}")
        policy["size"] = [int(v) for v in size]
        below = policy.get("below")
        if below is not None and not (isinstance(below, int) and below > 0):
            raise ValueError(f"model.image.resize.below must be a positive number of pixels (or null), got {below!r}")
    elif mode == "smart":
        for key in ("factor", "min_pixels", "max_pixels"):
            if not isinstance(policy.get(key), int) or policy[key] <= 0:
                raise ValueError(f"model.image.resize.{key} must be a positive integer, got {policy.get(key)!r}")
        if policy["min_pixels"] > policy["max_pixels"]:
            raise ValueError(f"model.image.resize.min_pixels ({policy['min_pixels']}) exceeds max_pixels "
                             f"({policy['max_pixels']})")
    else:
        for key in ("max_aspect", "min_side", "max_side"):
            if not isinstance(policy.get(key), (int, float)) or policy[key] <= 0:
                raise ValueError(f"model.image.resize.{key} must be a positive number, got {policy.get(key)!r}")
    return policy


def smart_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' `smart_resize` as GME's copy has it (VLM2Vec src/model/baseline_backbone/gme/
    gme_inference.py:246-277): sides rounded to `factor`, scaled into [min_pixels, max_pixels], an aspect ratio over
    200 clamped. Returns (height, width)."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    if max(h, w) / min(h, w) > 200:
        h, w = (w * 200, w) if h > w else (h, h * 200)
    return h, w


def resize_image(image, policy: dict | None):
    """Apply a `check_resize` policy to a PIL image (before the processor's own resizing)."""
    if policy is None or image is None:
        return image
    resample = RESAMPLE[policy["resample"]]
    if policy["mode"] == "fixed":
        if policy.get("below") is not None and min(image.size) >= policy["below"]:
            return image   # VLM2Vec-V2 src/model/processor.py:329-332: only images with a side under `below`
        return image.resize(tuple(policy["size"]), resample)
    if policy["mode"] == "smart":
        w, h = image.size
        h, w = smart_size(h, w, policy["factor"], policy["min_pixels"], policy["max_pixels"])
        return image.resize((w, h), resample)
    # Gen2Embed src/dataset.py:59-79: stretch beyond the aspect cap, then scale the long side down to max_side,
    # and (taking precedence) the short side up to min_side; sizes truncated to integers.
    w, h = image.size
    cap = policy["max_aspect"]
    if max(w, h) > cap * min(w, h):
        if w > h:
            h = w / cap
        else:
            w = h / cap
    scale = 1.0
    if max(w, h) > policy["max_side"]:
        scale = policy["max_side"] / max(w, h)
    if min(w, h) < policy["min_side"]:
        scale = policy["min_side"] / min(w, h)
    return image.resize((int(w * scale), int(h * scale)), resample)


def require_model_type(path: str, family: BackboneFamily, accepted: tuple[str, ...] | None = None,
                       hint: str = "") -> dict:
    """Read `path`'s config.json (no weights) and refuse a checkpoint of another architecture, naming the
    family that does load it when one is registered. Returns the config dict.

    `accepted` defaults to the family's `model_types`; an empty tuple accepts any type that no other
    registered family claims (text encoders: bert, roberta, mpnet, …)."""
    from transformers import PretrainedConfig

    accepted = family.model_types if accepted is None else accepted
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(path)
    except OSError as err:
        raise OSError(f"cannot read the model config of {path!r} for family {family.name!r}: {err}. model.path must "
                      "be a hub id or a local directory with a config.json") from err
    model_type = config_dict.get("model_type")
    owners = [f.name for f in FAMILIES.values() if f is not family and model_type in f.model_types]
    if model_type in accepted or (not accepted and not owners):
        return config_dict
    where = (f"it belongs to family {owners[0]!r}: set model.family={owners[0]} (or use that family's model config)"
             if owners else "no registered family loads it")
    raise ValueError(f"{path} holds a {model_type!r} checkpoint (architectures {config_dict.get('architectures')}), "
                     f"but family {family.name!r} loads only {list(accepted) or 'unclaimed types'}; {where}.{hint}")


def adapter_config(path: str) -> dict | None:
    """The `adapter_config.json` of a PEFT adapter checkpoint (local directory or hub id), else None."""
    local = Path(path)
    if local.is_dir():
        f = local / "adapter_config.json"
        return json.loads(f.read_text()) if f.is_file() else None
    if local.exists() or str(path).count("/") != 1:
        return None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(str(path), "adapter_config.json")).read_text())
    except Exception:  # offline, or no such file: not an adapter as far as we can tell; loaded as a checkpoint
        return None


def _adapter_tensors(path: str) -> dict:
    import torch

    names = ("adapter_model.safetensors", "adapter_model.bin")
    local = Path(path)
    if local.is_dir():
        files = [local / n for n in names if (local / n).is_file()]
    else:
        from huggingface_hub import hf_hub_download

        files = []
        for n in names:
            try:
                files.append(Path(hf_hub_download(str(path), n)))
                break
            except Exception:
                continue
    if not files:
        raise FileNotFoundError(f"{path} has an adapter_config.json but no {' or '.join(names)}")
    if files[0].suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(files[0]))
    return torch.load(files[0], map_location="cpu", weights_only=True)


def load_pretrained(family: BackboneFamily, path: str, dtype, accepted: tuple[str, ...] | None = None,
                    hint: str = "") -> nn.Module:
    """`AutoModel.from_pretrained(path)` after `require_model_type`; a PEFT adapter checkpoint (VLM2Vec-Qwen2VL,
    SaHa: `adapter_config.json` naming its base model) is applied to its base model, checked to have loaded every
    tensor (module names of older transformers versions are mapped by transformers; a tensor that did not land is
    an error, never a silently untrained adapter) and merged, so the backbone is a plain model."""
    from transformers import AutoModel

    config = adapter_config(path)
    if config is None:
        require_model_type(path, family, accepted, hint)
        return AutoModel.from_pretrained(path, dtype=dtype)
    base = config.get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path} is a PEFT adapter whose adapter_config.json names no base_model_name_or_path; "
                         "set it to the base model's hub id or directory")
    require_model_type(base, family, accepted, hint)
    model = AutoModel.from_pretrained(base, dtype=dtype)
    model.load_adapter(str(path))
    check_adapter_loaded(model, _adapter_tensors(path), str(path))
    return merge_adapter(model)


def processor_source(path: str) -> str:
    """Where the processor of `path` is read: the adapter directory when it ships one (VLM2Vec-Qwen2VL does), else
    the adapter's base model (as the references' evaluation scripts load it, e.g. VLM2Vec v1 eval.py:45)."""
    config = adapter_config(path)
    if config is None:
        return path
    local = Path(path)
    if local.is_dir():
        has = (local / "tokenizer_config.json").is_file()
    else:
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(str(path), "tokenizer_config.json")
            has = True
        except Exception:
            has = False
    return path if has else config["base_model_name_or_path"]


def check_adapter_loaded(model: nn.Module, tensors: dict, path: str) -> None:
    """Every LoRA/DoRA tensor of the adapter file must be a parameter of the model now: the (shape, sum) of each
    agree (names differ between transformers versions; values do not)."""
    import torch

    def signature(items):
        return sorted((tuple(t.shape), float(t.detach().double().sum())) for _, t in items)

    want = signature((k, t) for k, t in tensors.items() if "lora_" in k)
    have = signature((n, p) for n, p in model.named_parameters() if "lora_" in n)
    shapes_ok = [s for s, _ in want] == [s for s, _ in have]
    sums_ok = shapes_ok and all(torch.isclose(torch.tensor(a), torch.tensor(b), rtol=1e-2, atol=1e-3)
                                for (_, a), (_, b) in zip(want, have))
    if not sums_ok:
        raise ValueError(f"the adapter {path} did not load completely: its file holds {len(want)} LoRA tensors, the "
                         f"model now has {len(have)} LoRA parameters{'' if shapes_ok else ' of other shapes'} or other "
                         "values: its module names do not match this model. Merge it with the transformers/peft "
                         "versions it was trained with and set model.path to the merged checkpoint")


def merge_adapter(model: nn.Module) -> nn.Module:
    """Fold loaded LoRA/DoRA layers into their base weights and remove them (peft's `merge_and_unload`, for an adapter
    loaded through transformers' `load_adapter`)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if hasattr(model, attr):
            delattr(model, attr) if attr == "peft_config" else setattr(model, attr, False)
    leftover = [n for n, _ in model.named_parameters() if "lora_" in n]
    if leftover:
        raise RuntimeError(f"adapter layers left after merging: {leftover[:3]}")
    return model


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
