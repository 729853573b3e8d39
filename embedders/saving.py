"""The saved Embedder directory, loadable at once by embedlab, transformers, sentence-transformers and vLLM.

A saved directory is
- an embedlab Embedder (`embedder.json` + the backbone; `Embedder.from_pretrained`),
- a transformers model in the checkpoint layout of its hub family: decoder LMs are written as their generation
  class (`Qwen2VLForConditionalGeneration`, `LlavaOnevisionForConditionalGeneration`: `architectures` kept, weights
  under the hub's names, no LM head — an embedding model has none), which `AutoModel` and vLLM both read,
- a sentence-transformers model (`modules.json`: Transformer → Pooling → Normalize, `sentence_bert_config.json`,
  `config_sentence_transformers.json` with the query/document prompts and `truncate_dim`). Module types and the
  pooling config are written in both the legacy and the current sentence-transformers schema, because vLLM's
  pooling runner reads the legacy one (`sentence_transformers.models.Pooling`, `pooling_mode_*` flags).
  Decoder families get a chat template (`chat_template.jinja`, read by the tokenizer and the processor) that
  reproduces `embedders.prompts.format_text` exactly, for either side: sentence-transformers passes `task="query"` /
  `"document"` to it, and so can plain transformers (`processor.apply_chat_template(..., task="query")`).

The Hub model card (`README.md`) is the shipping room's (`shipping.model_card`); `shipping.save_embedder` writes the
directory and its card. Where a prompt or image setting reproduces a published model's preprocessing that the stock
loaders do not follow (`stock_differences`), saving logs one warning line and the card says what differs.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from datamodules.schema import PLACEHOLDER
from operations.atomic import respect_umask

from .backbones import get_family
from .finetune import is_peft_model
from .multi_vector_saving import multi_vector_modules
from .prompts import PromptFormat, image_token_for, placeholder_mode
from .source_checks import EMBEDDER_FILE

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
#: sentence-transformers module types in the legacy spelling: current sentence-transformers loads them, and vLLM's
#: pooling-config reader (up to at least 0.23) recognises only these.
ST_TRANSFORMER = "sentence_transformers.models.Transformer"
ST_POOLING = "sentence_transformers.models.Pooling"
ST_NORMALIZE = "sentence_transformers.models.Normalize"
#: embedlab pooling → (sentence-transformers pooling_mode, legacy flag that vLLM parses).
ST_POOLING_MODES = {"last": ("lasttoken", "pooling_mode_lasttoken"), "mean": ("mean", "pooling_mode_mean_tokens"),
                    "cls": ("cls", "pooling_mode_cls_token")}
LEGACY_POOLING_FLAGS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                        "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")



# ============================================================================================ the directory
def save_embedder(embedder, directory: str | Path) -> Path:
    """Write `embedder` as a directory that embedlab, transformers, sentence-transformers and vLLM all load (no model
    card: `shipping.save_embedder` adds one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    before = _file_states(directory)
    backbone = embedder.backbone
    if is_peft_model(backbone):
        backbone = copy.deepcopy(backbone).merge_and_unload()
    architecture = save_backbone(backbone, embedder.family, directory)
    embedder.family.save_processor(embedder.processor, directory)
    spec = embedder.spec()
    (directory / EMBEDDER_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    has_st = write_sentence_transformers_config(embedder, directory)
    give_written_files_ordinary_modes(directory, before)
    log.info("saved %s (%s) to %s", architecture, embedder.family.name, directory)
    differences = stock_differences(spec) if has_st else []
    if differences:
        log.warning("%s: sentence-transformers and transformers do not reproduce this Embedder exactly (%s); its "
                    "README.md says what differs and how to reproduce it (Embedder.from_pretrained is exact)",
                    directory, "; ".join(d.summary for d in differences))
    return directory


def _file_states(directory: Path) -> dict[Path, tuple[int, int]]:
    """(inode, mtime) of everything under `directory`: a file replaced or rewritten changes one of them."""
    states = {}
    for p in directory.rglob("*"):
        st = p.lstat()
        states[p] = (st.st_ino, st.st_mtime_ns)
    return states


def give_written_files_ordinary_modes(directory: Path, before: dict[Path, tuple[int, int]]) -> None:
    """Every file written since `before` (a `_file_states` snapshot) gets the mode a plain `open()` would give under
    the umask: transformers writes `model.safetensors` through a temporary file, mode 0600, which a group sharing
    the directory could not read. New subdirectories get `mkdir()`'s mode; files and directories that were there
    and were left alone keep theirs."""
    for p, (ino, mtime) in _file_states(directory).items():
        if p.is_symlink():
            continue
        if p.is_dir():
            if p not in before:
                respect_umask(p, directory=True)
        elif before.get(p) != (ino, mtime):
            respect_umask(p)


def hub_architecture(backbone, family) -> str:
    """The class name the directory's config.json declares. Decoder LMs keep their checkpoint's own architecture (the
    generation class the Hub and vLLM know, e.g. Qwen2VLForConditionalGeneration), or, built from a config, the class
    transformers registers for their model type; encoders and dual encoders keep the class that was loaded."""
    own = type(backbone).__name__
    if not family.has_chat:
        return own
    declared = [a for a in (getattr(backbone.config, "architectures", None) or []) if a != own]
    if declared:
        return declared[0]
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(backbone.config.model_type, own)


def save_backbone(backbone, family, directory: Path) -> str:
    """Save the weights and config.json in the hub checkpoint layout of `hub_architecture`; returns it.

    For a generation class the backbone is placed inside that class built on the meta device, and transformers'
    own `save_pretrained` writes the checkpoint names of the family (the same names as the original hub weights);
    the head (meta, never materialised) is left out."""
    import transformers

    architecture = hub_architecture(backbone, family)
    head_cls = getattr(transformers, architecture, None) if architecture != type(backbone).__name__ else None
    if head_cls is None or not getattr(head_cls, "base_model_prefix", ""):
        backbone.save_pretrained(str(directory))
        return type(backbone).__name__
    with torch.device("meta"):
        head = head_cls(copy.deepcopy(backbone.config))
    setattr(head, head_cls.base_model_prefix, backbone)
    state = {k: v for k, v in head.state_dict().items() if v.device.type != "meta"}
    head.save_pretrained(str(directory), state_dict=state)
    return architecture



# ============================================================================== sentence-transformers
def embedding_dimension(embedder) -> int:
    config = embedder.backbone.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.hidden_size)


def chat_template(family, prompt) -> str:
    """A Jinja chat template that renders one user message (texts and at most one image, in any order) exactly as
    `format_text` formats it for the side named by `task` ("query"; anything else is the target/document side).

    Every setting of the prompt is compiled in: the image token in the prompt's layout, where it goes
    (`image_position`), what a placeholder without an image becomes (`placeholder_without_image`, or the family's
    default), the chat layout with its system turn, query-only suffix and closing assistant turn. A system message
    (sentence-transformers' `prompt`) replaces the format's system prompt in the chat layout and is prepended to the
    text in the plain layout. Inputs that `format_text` refuses are refused with the same reason."""
    lit = json.dumps
    token = image_token_for(prompt, family)
    lines = [
        "{#- embedlab: " + prompt.name + " prompt of the " + family.name + " family (embedders/prompts.py) -#}",
        "{%- set ns = namespace(text='', system=none, images=0) -%}",
        "{%- for message in messages -%}",
        "{%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string "
        "else message['content'] -%}",
        "{%- for part in parts -%}",
        "{%- if part['type'] == 'image' -%}{%- set ns.images = ns.images + 1 -%}",
        "{%- elif part['type'] == 'text' and message['role'] == 'system' -%}"
        "{%- set ns.system = (ns.system or '') + part['text'] -%}",
        "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}",
        "{%- else -%}{{ raise_exception('embedlab models take text and images, got ' + part['type']) }}",
        "{%- endif -%}{%- endfor -%}{%- endfor -%}",
        "{%- if ns.images > 1 -%}{{ raise_exception('one image per input is supported') }}{%- endif -%}",
        f"{{%- set placeholder = {lit(PLACEHOLDER)} -%}}",
        "{%- set count = ns.text.count(placeholder) -%}",
        "{%- set body = ns.text -%}",
        "{%- if ns.images == 0 and count -%}" + _template_without_image(placeholder_mode(prompt, family), token,
                                                                         family.embeds_stray_image_tokens),
        "{%- elif ns.images == 1 -%}" + _template_with_image(token, prompt.image_position),
        "{%- endif -%}",
    ]
    if prompt.chat:
        lines.append(f"{{%- if task is defined and task == 'query' -%}}{{%- set body = body + "
                     f"({lit(prompt.query_suffix_image)} if ns.images else {lit(prompt.query_suffix_text)}) -%}}"
                     "{%- endif -%}")
        lines.append(f"{{%- set system = ns.system if ns.system is not none else {lit(prompt.system)} -%}}")
        (head, middle, tail), (plain_head, plain_tail) = _chat_layout(family, prompt.assistant)
        # `suffix` follows the whole chat layout (GME: "<|endoftext|>" after the generation prompt).
        tail, plain_tail = tail + prompt.suffix, plain_tail + prompt.suffix
        lines.append(f"{{%- if system -%}}{{{{ {lit(head)} + system + {lit(middle)} + body + {lit(tail)} }}}}"
                     f"{{%- else -%}}{{{{ {lit(plain_head)} + body + {lit(plain_tail)} }}}}{{%- endif -%}}")
    else:
        lines.append("{{ (ns.system or '') + body }}")
    return "\n".join(lines) + "\n"


def _template_without_image(mode: str, token: str | None, stray_ok: bool) -> str:
    """Jinja for a text holding the placeholder without an image, as `prompts.replace_placeholder` renders it."""
    lit = json.dumps
    if mode == "literal":
        return ""
    if mode == "strip":
        return "{%- set body = body.replace(placeholder, '') -%}"
    if mode == "image_token" and token is not None:
        if not stray_ok and token:
            return ("{{ raise_exception('placeholder_without_image=image_token: this backbone family cannot embed an "
                    "image token in a row without an image') }}")
        return f"{{%- set body = body.replace(placeholder, {lit(token)}) -%}}"
    return ("{{ raise_exception('the text holds the image placeholder but no image goes with it (placeholder_without_"
            f"image={mode})') }}}}")


def _template_with_image(token: str | None, position: str) -> str:
    """Jinja for a text with its image, as `prompts.replace_placeholder` renders it."""
    lit = json.dumps
    if token is None:
        return "{{ raise_exception('this backbone family takes no images, but an image was given') }}"
    out = "{%- if count > 1 -%}{{ raise_exception('the text holds more than one image placeholder') }}{%- endif -%}"
    if position == "first_line":
        # LLaVA's preprocess_multimodal: a text not starting with the image token gets it moved to the front, then "\n"
        out += f"{{%- set body = body.replace(placeholder, {lit(token)}) -%}}"
        if token:
            out += (f"{{%- if not (count and body.startswith({lit(token)})) -%}}{{%- set body = ({lit(token)} + "
                    f"'\\n' + body.replace({lit(token)}, '', 1).strip()).strip() -%}}{{%- endif -%}}")
        return out
    return out + (f"{{%- set body = body.replace(placeholder, {lit(token)}) if count else {lit(token)} + body -%}}")


def _chat_layout(family, assistant: str | None = None) -> tuple[tuple[str, str, str], tuple[str, str]]:
    """The family's chat layout as literal pieces around the system prompt and the user turn, read off `family.chat`
    (so the template cannot drift from the code that formats training and evaluation inputs)."""
    sys_mark, user_mark = "\x00SYSTEM\x00", "\x00USER\x00"
    kwargs = {} if assistant is None else {"assistant": assistant}
    full = family.chat(sys_mark, user_mark, **kwargs)
    head, rest = full.split(sys_mark)
    middle, tail = rest.split(user_mark)
    plain_head, plain_tail = family.chat(None, user_mark, **kwargs).split(user_mark)
    return (head, middle, tail), (plain_head, plain_tail)


def st_prompts(prompt) -> dict[str, str]:
    """sentence-transformers prompts: the system prompt for both sides in the chat layout (sent as the system message
    that the chat template renders), empty in the plain layout (MMEB texts carry their own instructions)."""
    system = prompt.system if prompt.chat and prompt.system else ""
    return {"query": system, "document": system}


def write_sentence_transformers_config(embedder, directory: Path) -> bool:
    """Write the sentence-transformers (and vLLM pooling) metadata; False (with the reason logged) for families whose
    pooling sentence-transformers cannot express (dual encoders fuse two towers in embedlab's own way)."""
    multi_vector = getattr(embedder, "head", None) is not None
    if not multi_vector and embedder.pooling not in ST_POOLING_MODES:
        log.info("%s: no sentence-transformers config for pooling %r (family %s); load it with embedlab",
                 directory, embedder.pooling, embedder.family.name)
        return False
    dim = embedding_dimension(embedder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER}]
    if multi_vector:  # a MultiVectorEncoder: projection, per-token normalisation, scoring mask (multi_vector_saving)
        modules += multi_vector_modules(embedder, directory)
    else:
        modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING})
        if embedder.normalize:
            modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE})
        mode, flag = ST_POOLING_MODES[embedder.pooling]
        # Legacy flags first: older vLLM takes the first key whose value is true as the pooling type.
        pooling = {f: f == flag for f in LEGACY_POOLING_FLAGS} | {"embedding_dimension": dim, "pooling_mode": mode}
        _write_json(directory / "1_Pooling" / "config.json", pooling)
        if embedder.normalize:
            (directory / "2_Normalize").mkdir(exist_ok=True)
    _write_json(directory / "modules.json", modules)
    output = {"method": "forward", "method_output_name": "last_hidden_state"}
    bert_config: dict[str, Any] = {"transformer_task": "feature-extraction", "module_output_name": "token_embeddings"}
    if embedder.family.has_chat:
        (directory / CHAT_TEMPLATE_FILE).write_text(chat_template(embedder.family, embedder.prompt))
        modality = {"text": output, "message": {**output, "format": "structured"}}
        if embedder.family.takes_images:
            modality["image"] = output
        bert_config["modality_config"] = modality
        # embedlab never truncates multimodal inputs (a cut could fall inside an image's tokens)
        bert_config["processing_kwargs"] = {"text": {"truncation": False}}
    else:
        bert_config["modality_config"] = {"text": output}
        bert_config["max_seq_length"] = int(embedder.input_builder.max_length)
        bert_config["do_lower_case"] = False
    _write_json(directory / "sentence_bert_config.json", bert_config)
    st_config: dict[str, Any] = {
        "__version__": _versions(),
        "model_type": "MultiVectorEncoder" if multi_vector else "SentenceTransformer",
        "prompts": st_prompts(embedder.prompt),
        "default_prompt_name": None,
        "similarity_fn_name": embedder.head.similarity if multi_vector else "cosine" if embedder.normalize else "dot",
    }
    if embedder.truncate_dim is not None:
        st_config["truncate_dim"] = int(embedder.truncate_dim)
    _write_json(directory / "config_sentence_transformers.json", st_config)
    return True


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("sentence-transformers", "transformers", "torch"):
        try:
            out[name.replace("-", "_")] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")



# ==================================================================== what stock loaders do differently
@dataclass(frozen=True)
class StockDifference:
    """One way sentence-transformers / plain transformers (and vLLM) would encode differently from embedlab."""

    key: str
    summary: str   # a few words, for the warning of save_embedder
    detail: str    # the model card's sentence: what differs, for which inputs, and how to reproduce embedlab


def stock_differences(spec: Mapping) -> list[StockDifference]:
    """What the stock loaders do differently from `Embedder.encode` for the Embedder of `spec` (its embedder.json),
    on inputs within `max_length`; empty when they reproduce it exactly (the default `plain` prompt: tested)."""
    family = get_family(spec["family"])
    prompt = PromptFormat.from_config(spec.get("prompt"))
    out = []
    token = image_token_for(prompt, family)
    if family.takes_images and family.reference_image_positions and token != family.chat_image_token:
        out.append(StockDifference(
            "image_positions", f"bare {token} image positions",
            f"**Image positions.** This model's prompt (`{prompt.name}`) writes the image as a bare `{token}` run "
            f"(no `<|vision_start|>`), which embedlab positions as the Qwen2-VL code that prompt comes from does: "
            "image tokens get 3D (M-RoPE) image positions only right after `<|vision_start|>`, so here they get "
            "text positions. transformers ≥ 5, and sentence-transformers with it, give them image positions, so "
            "their vectors for inputs **with an image** differ from embedlab's (texts alone are unaffected). The "
            "transformers code below sets `mm_token_type_ids` to 0 and matches embedlab; sentence-transformers has "
            "no such switch. vLLM computes M-RoPE positions with its own code (not verified for this layout)."))
    if (family.takes_images and family.embeds_stray_image_tokens and token
            and placeholder_mode(prompt, family) == "image_token"):
        out.append(StockDifference(
            "stray_image_token", "<|image_1|> without an image",
            f"**`<|image_1|>` without an image** (MMEB-train WebQA queries): embedlab renders it as `{token}` and "
            "embeds that as an ordinary token, as the reference does; stock processors refuse such a text (\"Found 1 "
            f"{family.image_token} tokens in the text but no images were passed\"). Encode these texts with embedlab."))
    resize = (spec.get("image") or {}).get("resize")
    if resize:
        out.append(StockDifference(
            "image_resize", f"images resized first ({_describe_resize(resize)})",
            f"**Image resizing.** embedlab resizes every image before the processor ({_describe_resize(resize)}; "
            "`model.image.resize`), the stock processors do not: resize images the same way before passing them "
            "(the `resize` function of the transformers code below) to get embedlab's vectors."))
    return out


def _describe_resize(policy: Mapping) -> str:
    if policy["mode"] == "fixed":
        w, h = policy["size"]
        when = f" when a side is under {policy['below']} px" if policy.get("below") is not None else ""
        return f"to {w}×{h}{when}, {policy.get('resample', 'bicubic')}"
    if policy["mode"] == "smart":
        return (f"sides rounded to multiples of {policy['factor']} px within {policy['min_pixels']}.."
                f"{policy['max_pixels']} pixels (qwen-vl-utils fetch_image), {policy.get('resample', 'bicubic')}")
    return (f"aspect ratio clamped to {policy['max_aspect']}, long side down to {policy['max_side']} px or short side "
            f"up to {policy['min_side']} px, {policy.get('resample', 'bicubic')}")


