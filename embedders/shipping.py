"""Shipping a trained Embedder the way the ecosystem loads it: the one place that `Embedder.save_pretrained`,
train.py (the model card after the final evaluation) and export.py (card and Hub upload) call.

A saved directory is at once
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
  `"document"` to it, and so can plain transformers (`processor.apply_chat_template(..., task="query")`),
- a Hub model card (`README.md`: YAML metadata, base model, data, loss and hyperparameters, the MMEB table of
  `eval/results.json`, usage in embedlab / sentence-transformers / transformers / vLLM, citations).

The default prompt ships exactly. Where a prompt or image setting reproduces a published model's preprocessing that
the stock loaders do not follow (`stock_differences`: Qwen2-VL's bare image tokens and their positions, a
placeholder without an image as an image token, `model.image.resize`), the card says what differs and how to get
embedlab's vectors (its transformers code does), and saving logs one warning line; the other files are written
all the same.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

EMBEDDER_FILE = "embedder.json"
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
PLACEHOLDER = "<|image_1|>"


# ============================================================================================ the directory
def save_embedder(embedder, directory: str | Path) -> Path:
    """Write `embedder` as a directory that embedlab, transformers, sentence-transformers and vLLM all load, with a
    model card (without training details: `write_model_card` adds them)."""
    from .finetune import is_peft_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backbone = embedder.backbone
    if is_peft_model(backbone):
        backbone = copy.deepcopy(backbone).merge_and_unload()
    architecture = save_backbone(backbone, embedder.family, directory)
    embedder.family.save_processor(embedder.processor, directory)
    spec = embedder.spec()
    (directory / EMBEDDER_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    has_st = write_sentence_transformers_config(embedder, directory)
    write_model_card(directory)
    log.info("saved %s (%s) to %s", architecture, embedder.family.name, directory)
    differences = stock_differences(spec) if has_st else []
    if differences:
        log.warning("%s: sentence-transformers and transformers do not reproduce this Embedder exactly (%s); its "
                    "README.md says what differs and how to reproduce it (Embedder.from_pretrained is exact)",
                    directory, "; ".join(d.summary for d in differences))
    return directory


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
    from .prompts import image_token_for, placeholder_mode

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
    if embedder.pooling not in ST_POOLING_MODES:
        log.info("%s: no sentence-transformers config for pooling %r (family %s); load it with embedlab",
                 directory, embedder.pooling, embedder.family.name)
        return False
    dim = embedding_dimension(embedder)
    modules = [{"idx": 0, "name": "0", "path": "", "type": ST_TRANSFORMER},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": ST_POOLING}]
    if embedder.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": ST_NORMALIZE})
    _write_json(directory / "modules.json", modules)
    mode, flag = ST_POOLING_MODES[embedder.pooling]
    # Legacy flags first: older vLLM takes the first key whose value is true as the pooling type.
    pooling = {f: f == flag for f in LEGACY_POOLING_FLAGS} | {"embedding_dimension": dim, "pooling_mode": mode}
    _write_json(directory / "1_Pooling" / "config.json", pooling)
    if embedder.normalize:
        (directory / "2_Normalize").mkdir(exist_ok=True)
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
        "model_type": "SentenceTransformer",
        "prompts": st_prompts(embedder.prompt),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if embedder.normalize else "dot",
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
    from .backbones import get_family
    from .prompts import PromptFormat, image_token_for, placeholder_mode

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
        return f"to {w}×{h}, {policy.get('resample', 'bicubic')}"
    return (f"aspect ratio clamped to {policy['max_aspect']}, long side down to {policy['max_side']} px or short side "
            f"up to {policy['min_side']} px, {policy.get('resample', 'bicubic')}")


# ================================================================================================ model card
#: Example inputs of the usage snippets (the card's transformers snippet is executed by the tests on them).
EXAMPLE_QUERY_TEXT = f"{PLACEHOLDER}\nRepresent the given image with the following question: What is the shape?"
EXAMPLE_DOCUMENTS = ("a red square", "a blue circle")
EXAMPLE_TEXT_QUERY = "Find a caption for a red square in the middle"

CITATIONS = {
    "mmeb": """@article{jiang2024vlm2vec,
  title={VLM2Vec: Training Vision-Language Models for Massive Multimodal Embedding Tasks},
  author={Jiang, Ziyan and Meng, Rui and Yang, Xinyi and Yavuz, Semih and Zhou, Yingbo and Chen, Wenhu},
  journal={arXiv preprint arXiv:2410.05160},
  year={2024}
}""",
    "infonce": """@misc{oord2018representation,
  title={Representation Learning with Contrastive Predictive Coding},
  author={van den Oord, Aaron and Li, Yazhe and Vinyals, Oriol},
  year={2018},
  eprint={1807.03748},
  archivePrefix={arXiv}
}""",
    "llave": """@misc{lan2025llave,
  title={LLaVE: Large Language and Vision Embedding Models with Hardness-Weighted Contrastive Learning},
  author={Lan, Zhibin and others},
  year={2025},
  eprint={2503.04812},
  archivePrefix={arXiv}
}""",
    "gradcache": """@misc{gao2021scaling,
  title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
  author={Gao, Luyu and Zhang, Yunyi and Han, Jiawei and Callan, Jamie},
  year={2021},
  eprint={2101.06983},
  archivePrefix={arXiv}
}""",
    "matryoshka": """@misc{kusupati2022matryoshka,
  title={Matryoshka Representation Learning},
  author={Kusupati, Aditya and Bhatt, Gantavya and Rege, Aniket and Wallingford, Matthew and Sinha, Aditya and
          Ramanujan, Vivek and Howard-Snyder, William and Chen, Kaifeng and Kakade, Sham and Jain, Prateek and
          Farhadi, Ali},
  year={2022},
  eprint={2205.13147},
  archivePrefix={arXiv}
}""",
    "lora": """@misc{hu2021lora,
  title={LoRA: Low-Rank Adaptation of Large Language Models},
  author={Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and Wang, Shean and
          Wang, Lu and Chen, Weizhu},
  year={2021},
  eprint={2106.09685},
  archivePrefix={arXiv}
}""",
    "sbert": """@inproceedings{reimers-2019-sentence-bert,
  title={Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks},
  author={Reimers, Nils and Gurevych, Iryna},
  booktitle={Proceedings of EMNLP-IJCNLP 2019},
  year={2019},
  eprint={1908.10084},
  archivePrefix={arXiv}
}""",
}
#: Methods used without a verified bibliographic record here: named in the card by title.
METHOD_TITLES = {
    "hierarchical": "the hierarchical embedding prompt of \"From Generator to Embedder\"",
    "saha": "SaHa (self-aware hard negative sampling)",
}


def write_model_card(directory: str | Path, training: Mapping | None = None, results: Mapping | None = None,
                     license: str | None = None, model_id: str | None = None) -> Path:
    """(Re)write `directory/README.md`: Hub YAML metadata and the card text, from the directory's own files plus the
    training record (`training_record`) and the MMEB results (the `results.json` dict) when known."""
    directory = Path(directory)
    spec = json.loads((directory / EMBEDDER_FILE).read_text())
    config = json.loads((directory / "config.json").read_text())
    has_st = (directory / "modules.json").is_file()
    name = model_id or directory.name
    base = spec.get("base_model")
    license = license or _base_model_license(base) or "other"
    metadata = _card_metadata(spec, config, training, results, license, has_st, name)
    sections = [
        f"# {name}\n",
        _card_summary(spec, config, base, has_st),
        _card_training(training),
        _card_results(results, name, training),
        _card_usage(spec, config, model_id or str(directory), has_st),
        _card_citations(spec, training, has_st),
    ]
    text = "---\n" + _yaml(metadata) + "---\n\n" + "\n".join(s for s in sections if s)
    path = directory / CARD_FILE
    path.write_text(text)
    return path


def _yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def _is_hub_id(value) -> bool:
    return (isinstance(value, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None
            and not Path(value).exists())


def _base_model_license(base) -> str | None:
    """The license declared in a local base model's own card (e.g. all-MiniLM-L6-v2's apache-2.0), if any."""
    if not base or not (Path(base) / CARD_FILE).is_file():
        return None
    match = re.search(r"^license:\s*(\S+)\s*$", (Path(base) / CARD_FILE).read_text(), re.MULTILINE)
    return match.group(1) if match else None


def _card_metadata(spec, config, training, results, license, has_st, name) -> dict:
    takes_images = spec["family"] not in ("text_encoder",)
    meta: dict[str, Any] = {
        "library_name": "sentence-transformers" if has_st else "transformers",
        "pipeline_tag": "sentence-similarity" if has_st else "feature-extraction",
        "license": license,
    }
    if license == "other":
        meta["license_name"] = "same-as-base-model"
    if _is_hub_id(spec.get("base_model")):
        meta["base_model"] = spec["base_model"]
    data = (training or {}).get("data") or {}
    if _is_hub_id(data.get("source")):
        meta["datasets"] = [data["source"]]
    tags = ["embedlab", "embeddings", "feature-extraction"]
    if has_st:
        tags.insert(1, "sentence-transformers")
    if takes_images:
        tags.append("multimodal-embedding")
    tags.append("mmeb")
    if ((training or {}).get("loss") or {}).get("matryoshka_dims"):
        tags.append("matryoshka")
    meta["tags"] = tags
    if results:
        eval_source = ((training or {}).get("eval_data") or {}).get("source") or "MMEB-eval"
        metrics = [{"type": "precision_at_1", "name": "Overall", "value": round(float(results["overall"]), 2)}]
        for key in ("IND", "OOD"):
            if results.get(key) is not None:
                metrics.append({"type": "precision_at_1", "name": key, "value": round(float(results[key]), 2)})
        for task, value in (results.get("meta_tasks") or {}).items():
            metrics.append({"type": "precision_at_1", "name": task, "value": round(float(value), 2)})
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "feature-extraction", "name": "MMEB (Precision@1 ×100)"},
            "dataset": {"name": "MMEB-eval" if _is_hub_id(eval_source) else "bundled eval (embedlab)",
                        "type": eval_source if _is_hub_id(eval_source) else "embedlab/bundled", "split": "test"},
            "metrics": metrics}]}]
    return meta


def _describe_base(spec, config, base) -> str:
    arch = (config.get("architectures") or ["?"])[0]
    if base is None:
        return f"randomly initialised `{arch}` (embedlab's tiny config of the real architecture; not pretrained)"
    if _is_hub_id(base):
        return f"[`{base}`](https://huggingface.co/{base}) (`{arch}`)"
    return f"`{base}` (local directory; `{arch}`)"


def _card_summary(spec, config, base, has_st) -> str:
    from .backbones import get_family
    from .prompts import PromptFormat

    family = get_family(spec["family"])
    prompt = PromptFormat.from_config(spec.get("prompt"))
    dim = _hidden_size(config)
    rows = [("Base model", _describe_base(spec, config, base)),
            ("Backbone family (embedlab)", f"`{spec['family']}`"),
            ("Pooling", {"last": "last token", "mean": "mean over tokens", "cls": "first token (CLS)",
                         "model": "the model's own heads"}.get(spec["pooling"], spec["pooling"])
             + (", L2-normalised" if spec.get("normalize", True) else "")),
            ("Embedding dimension", f"{spec['truncate_dim']} (first {spec['truncate_dim']} of {dim}, re-normalised)"
             if spec.get("truncate_dim") else str(dim)),
            ("Prompt", _describe_prompt(prompt, family))]
    lines = ["An embedding model trained with embedlab (Lightning + Hydra) for universal "
             "multimodal retrieval in the MMEB setting: a language-model backbone with a pooling head that maps texts, "
             "images and image+text inputs into one vector space." if spec["family"] != "text_encoder" else
             "A text embedding model trained with embedlab (Lightning + Hydra) in the MMEB setting.", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v.replace('|', chr(92) + '|')} |" for k, v in rows]   # a pipe inside a cell must be escaped
    what = ("at once an embedlab Embedder (`embedder.json`), a transformers checkpoint, a sentence-transformers model "
            "and a vLLM pooling model (GPU; `config.json` keeps the architecture, `modules.json` names the pooling)"
            if has_st else "an embedlab Embedder (`embedder.json`) whose backbone is a transformers checkpoint")
    lines += ["", f"The directory is {what}.", ""]
    return "\n".join(lines)


def _hidden_size(config: Mapping) -> int | str:
    for source in (config, config.get("text_config") or {}):
        if "hidden_size" in source:
            return source["hidden_size"]
    return "?"


def _describe_prompt(prompt, family) -> str:
    from .prompts import image_token_for, placeholder_mode

    if prompt.chat:
        text = f"`{prompt.name}`: the backbone's chat layout"
        if prompt.system:
            text += f" with the system prompt \"{prompt.system}\""
    else:
        text = f"`{prompt.name}`: MMEB texts as they are"
    token = image_token_for(prompt, family)
    if family.takes_images and token is not None:
        if token:
            text += f"; `{PLACEHOLDER}` → `{token}`"
            if prompt.image_position == "first_line":
                text += " moved to the front and followed by a newline"
        else:
            text += f"; `{PLACEHOLDER}` removed (the image goes to the vision tower)"
        without = {"literal": "kept as text", "strip": "removed", "error": "refused",
                   "image_token": f"`{token}` as an ordinary token"}[placeholder_mode(prompt, family)]
        text += f"; `{PLACEHOLDER}` without an image: {without}"
    if prompt.chat and (prompt.query_suffix_image or prompt.query_suffix_text):
        text += (f"; queries only end with \"{prompt.query_suffix_text.strip()}\" (text) / "
                 f"\"{prompt.query_suffix_image.strip()}\" (with an image)")
    if prompt.chat and prompt.assistant is not None:
        text += f"; a closing assistant turn {json.dumps(prompt.assistant)}"
    return text


def _card_training(training: Mapping | None) -> str:
    if not training:
        return ("## Training\n\nNo training record was given with this directory (saved with "
                "`Embedder.save_pretrained`); `export.py` and the end of `train.py` write one.\n")
    rows = _training_rows(training)
    lines = ["## Training", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "",
             "<details><summary>Training configuration (from the run's Hydra config)</summary>", "",
             "```yaml", _yaml(_plain_training(training)).rstrip(), "```", "</details>", ""]
    return "\n".join(lines)


def _plain_training(training: Mapping) -> dict:
    return json.loads(json.dumps(training, default=str))


def _fmt_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    return str(v)


def _training_rows(t: Mapping) -> list[tuple[str, str]]:
    model, loss, data = t.get("model") or {}, t.get("loss") or {}, t.get("data") or {}
    trainer, sampler = t.get("trainer") or {}, t.get("sampler") or {}
    rows = []
    if data:
        source = data.get("source")
        desc = ("embedlab's bundled offline shapes data (MMEB-train schema)" if data.get("bundled")
                else f"`{source}`")
        subsets = data.get("subsets")
        desc += (f"; subsets ({len(subsets)}): {', '.join(map(str, subsets))}" if subsets else "; all subsets")
        if data.get("split"):
            desc += f"; split `{data['split']}`"
        if data.get("max_per_subset"):
            desc += f"; at most {data['max_per_subset']} pairs per subset"
        if data.get("use_hard_negatives") is not None:
            desc += ("; explicit hard negatives used" if data.get("use_hard_negatives") else "; explicit hard negatives "
                     "not used")
        rows.append(("Training data", desc))
    lora = model.get("lora")
    mode = "full fine-tuning" if not lora else (
        ("DoRA" if lora.get("use_dora") else "LoRA") + " " + ", ".join(f"{k} {_fmt_value(v)}" for k, v in lora.items()
                                                                      if k != "use_dora"))
    if model.get("freeze_vision"):
        mode += "; vision tower frozen"
    if model.get("gradient_checkpointing"):
        mode += "; gradient checkpointing"
    rows.append(("Fine-tuning", mode))
    target = str(loss.get("_target_", "")).rsplit(".", 1)[-1]
    if target:
        parts = [f"`{target}`", f"τ {_fmt_value(loss.get('temperature'))}"
                 + (" (learnable)" if loss.get("learnable_temperature") else "")]
        if "alpha" in loss:
            parts.append(f"α {_fmt_value(loss['alpha'])}")
        parts.append("both directions" if loss.get("symmetric") else "query→target")
        if loss.get("matryoshka_dims"):
            parts.append(f"Matryoshka dims {_fmt_value(loss['matryoshka_dims'])} (weights "
                         f"{_fmt_value(loss.get('matryoshka_weights') or [1] * len(loss['matryoshka_dims']))}, summed)")
        rows.append(("Loss", "; ".join(parts)))
    batch = data.get("batch_size")
    if batch:
        devices, nodes = trainer.get("devices") or 1, trainer.get("num_nodes") or 1
        accumulate = trainer.get("accumulate_grad_batches") or 1
        desc = f"{batch} per device"
        if isinstance(devices, int) and isinstance(nodes, int):
            desc += f" × {devices} device(s) × {nodes} node(s)" + (f" × {accumulate} accumulated" if accumulate > 1
                                                                   else "")
        chunk = (model.get("gradcache") or {}).get("chunk_size")
        if chunk:
            desc += f"; GradCache chunks of {chunk}"
        rows.append(("Batch", desc))
    if sampler:
        rows.append(("Batch sampler", f"`{str(sampler.get('_target_', '')).rsplit('.', 1)[-1]}`"))
    opt = model.get("optimizer") or {}
    if opt:
        rows.append(("Optimizer", f"`{str(opt.get('_target_', '')).rsplit('.', 1)[-1]}`, "
                     + ", ".join(f"{k} {_fmt_value(v)}" for k, v in opt.items() if not k.startswith("_"))))
    sched = model.get("scheduler") or {}
    if sched:
        rows.append(("LR schedule", ", ".join(f"{k} {_fmt_value(v)}" for k, v in sched.items()
                                              if not k.startswith("_"))))
    steps = t.get("steps")
    if trainer or steps is not None:
        desc = f"{steps} optimizer steps" if steps is not None else ""
        if trainer.get("max_steps") not in (None, -1):
            desc += ("" if not desc else " of ") + f"max_steps {trainer['max_steps']}"
        if trainer.get("precision"):
            desc += f"; precision {trainer['precision']}"
        rows.append(("Steps, precision", desc))
    prompt = t.get("prompt") or {}
    if prompt:
        rows.append(("Prompt", f"`{prompt.get('name', 'plain')}`"))
    if t.get("seed") is not None:
        rows.append(("Seed", str(t["seed"])))
    return rows


def _card_results(results: Mapping | None, name: str, training: Mapping | None) -> str:
    if not results:
        return "## Evaluation\n\nNo MMEB results were recorded with this directory.\n"
    from evaluation.mmeb import render_table

    eval_data = (training or {}).get("eval_data") or {}
    source = eval_data.get("source")
    where = (f"`{source}`" if _is_hub_id(source) else
             "embedlab's bundled offline eval sets (MMEB-eval schema)" if eval_data.get("bundled") else
             f"`{source}`" if source else "the eval datasets of the run")
    return ("## Evaluation (MMEB protocol)\n\n"
            f"Precision@1 ×100 on {where}: every unique query and candidate encoded once, a query is a hit when its "
            "highest-cosine candidate is the ground truth (index 0); Overall is the mean over datasets "
            "(the run's `eval/results.json`).\n\n" + render_table(results, name) + "\n")


def _card_usage(spec, config, model_id: str, has_st: bool) -> str:
    from .backbones import get_family

    family = get_family(spec["family"])
    truncate = spec.get("truncate_dim")
    multimodal = family.takes_images
    fetch = ("from huggingface_hub import snapshot_download\n\nembedder = Embedder.from_pretrained("
             f"snapshot_download(\"{model_id}\"))" if _is_hub_id(model_id)
             else f"embedder = Embedder.from_pretrained(\"{model_id}\")")
    out = ["## Usage", "", "### embedlab", "", "```python", "from PIL import Image", "", "from embedders import Embedder",
           ""]
    out += fetch.splitlines() if _is_hub_id(model_id) else [fetch]
    if multimodal:
        out += ["image = Image.new(\"RGB\", (84, 84), \"red\")",
                f"query = embedder.encode([{json.dumps(EXAMPLE_QUERY_TEXT)}], images=[image], side=\"query\")"]
    else:
        out += [f"query = embedder.encode([{json.dumps(EXAMPLE_TEXT_QUERY)}], side=\"query\")"]
    out += [f"docs = embedder.encode({json.dumps(list(EXAMPLE_DOCUMENTS))}, side=\"target\")",
            "print(query @ docs.T)   # cosine similarities (the vectors are L2-normalised)", "```", ""]
    differences = stock_differences(spec) if has_st else []
    if differences:
        out += ["### Differences from embedlab in sentence-transformers and transformers", "",
                "Part of this model's preprocessing (that of the published model its prompt or image settings "
                "reproduce) is not what the stock loaders do. `Embedder.from_pretrained` (above) reproduces its "
                "training and evaluation exactly; elsewhere:", ""]
        out += [f"- {d.detail}" for d in differences] + [""]
    if has_st:
        out += ["### sentence-transformers", "", "```python", "from PIL import Image",
                "from sentence_transformers import SentenceTransformer", "",
                f"model = SentenceTransformer(\"{model_id}\")"]
        if multimodal:
            out += ["image = Image.new(\"RGB\", (84, 84), \"red\")",
                    f"query = model.encode_query([{{\"text\": {json.dumps(EXAMPLE_QUERY_TEXT)}, \"image\": image}}]"
                    + (", normalize_embeddings=True)" if truncate else ")"),
                    "image_doc = model.encode_document([image]" + (", normalize_embeddings=True)" if truncate else ")")]
        else:
            out += [f"query = model.encode_query([{json.dumps(EXAMPLE_TEXT_QUERY)}]"
                    + (", normalize_embeddings=True)" if truncate else ")")]
        out += [f"docs = model.encode_document({json.dumps(list(EXAMPLE_DOCUMENTS))}"
                + (", normalize_embeddings=True)" if truncate else ")"),
                "print(model.similarity(query, docs))", "```", ""]
        notes = ["`encode_query` / `encode_document` give the vectors of embedlab's `side=\"query\"` / "
                 "`side=\"target\"`" + (" (tested to 1e-5)." if not differences else
                                          ", except as listed under *Differences from embedlab* above.")]
        if family.has_chat:
            notes.append("The query/document formatting (image token, chat layout, the query-only suffix) lives in "
                         "the chat template (`chat_template.jinja`), which receives `task`; the system prompt is the "
                         "`query`/`document` prompt of `config_sentence_transformers.json`. Inputs longer than "
                         f"`max_length` ({spec.get('max_length')} tokens) are not truncated there, while embedlab "
                         "drops their last text tokens (never image tokens).")
        if truncate:
            notes.append(f"`truncate_dim` is {truncate}: sentence-transformers truncates after its Normalize module, "
                         "so pass `normalize_embeddings=True` for unit vectors (cosine similarities are the same "
                         "either way).")
        out += [" ".join(notes), ""]
        out += ["### transformers", "", "```python"]
        out += _transformers_snippet(family, spec, model_id, {d.key for d in differences}).splitlines() + ["```", ""]
        out += ["### vLLM (GPU only; not run on CPU)", "", "```python"] + _vllm_snippet(family, model_id).splitlines()
        out += ["```", "",
                "vLLM reads the architecture from `config.json` and the pooling (and normalisation) from "
                "`modules.json`." + (f" It returns the full {_hidden_size(config)}-dimensional vector: keep the first "
                                     f"{truncate} and re-normalise." if truncate else ""), ""]
    else:
        out += ["### transformers", "",
                f"`AutoModel.from_pretrained` reads the backbone, but this family (`{family.name}`) turns inputs into "
                "one vector in embedlab's own way (see `embedders/backbones/` in embedlab), which no stock loader "
                "reproduces: load it with embedlab as above.", ""]
    out += ["### MTEB / MIEB (with embedlab installed)", "", "```bash",
            f"python -m evaluation.mteb_model {model_id if not _is_hub_id(model_id) else '<local copy>'} "
            "--benchmark \"MIEB(lite)\"", "```", ""]
    return "\n".join(out)


def _transformers_snippet(family, spec, model_id: str, differences: set[str] = frozenset()) -> str:
    truncate = spec.get("truncate_dim")
    cut = f"    emb = emb[:, :{truncate}]   # truncate_dim\n" if truncate else ""
    if family.has_chat:
        positions = ("    # This model gives its bare image tokens text positions (the Qwen2-VL code its prompt comes from\n"
                     "    # gives image positions only after <|vision_start|>); transformers >= 5 would give them image ones.\n"
                     "    if \"mm_token_type_ids\" in inputs:\n"
                     "        inputs[\"mm_token_type_ids\"] = torch.zeros_like(inputs[\"mm_token_type_ids\"])\n"
                     if "image_positions" in differences else "")
        resize = _resize_snippet((spec.get("image") or {}).get("resize")) if "image_resize" in differences else ""
        image = "resize(image)" if resize else "image"
        return f"""import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor

MODEL = "{model_id}"
processor = AutoProcessor.from_pretrained(MODEL)
model = AutoModel.from_pretrained(MODEL).eval()


def embed(conversations, task):
    # The directory's chat template formats inputs exactly as in training; task="query" adds the query treatment.
    inputs = processor.apply_chat_template(conversations, task=task, tokenize=True, return_dict=True,
                                           return_tensors="pt", processor_kwargs={{"padding": True}})
{positions}    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"]
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)   # last non-padding token, whatever the padding side
    emb = hidden[torch.arange(hidden.shape[0]), last]
{cut}    return torch.nn.functional.normalize(emb, dim=-1)


def user(*content):
    return [{{"role": "user", "content": list(content)}}]

{resize}
image = Image.new("RGB", (84, 84), "red")
query = embed([user({{"type": "image", "image": {image}}}, {{"type": "text", "text": {json.dumps(EXAMPLE_QUERY_TEXT)}}})],
              task="query")
docs = embed([user({{"type": "text", "text": t}}) for t in {json.dumps(list(EXAMPLE_DOCUMENTS))}], task="document")
print(query @ docs.T)
"""
    pool = {"mean": """    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)   # mean over non-padding tokens
""", "cls": """    emb = hidden[:, 0]   # first token (CLS)
""", "last": """    mask = inputs["attention_mask"]
    emb = hidden[torch.arange(hidden.shape[0]), mask.shape[1] - 1 - mask.flip(1).argmax(1)]   # last token
"""}[spec["pooling"]]
    return f"""import torch
from transformers import AutoModel, AutoTokenizer

MODEL = "{model_id}"
tokenizer = AutoTokenizer.from_pretrained(MODEL)
model = AutoModel.from_pretrained(MODEL).eval()


def embed(texts):
    inputs = tokenizer(texts, padding=True, truncation=True, max_length={int(spec.get("max_length", 512))},
                       return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
{pool}{cut}    return torch.nn.functional.normalize(emb, dim=-1)


query = embed([{json.dumps(EXAMPLE_TEXT_QUERY)}])
docs = embed({json.dumps(list(EXAMPLE_DOCUMENTS))})
print(query @ docs.T)
"""


#: PIL resampling filters by embedlab's names (`model.image.resize.resample`).
PIL_RESAMPLE = {"nearest": "NEAREST", "lanczos": "LANCZOS", "bilinear": "BILINEAR", "bicubic": "BICUBIC"}


def _resize_snippet(policy: Mapping) -> str:
    """A `resize(image)` function doing what `embedders.backbones.base.resize_image` does with `policy`."""
    resample = f"Image.Resampling.{PIL_RESAMPLE[policy.get('resample', 'bicubic')]}"
    if policy["mode"] == "fixed":
        w, h = policy["size"]
        return f"""
def resize(image):   # what embedlab does to every image before the processor (model.image.resize)
    return image.resize(({w}, {h}), {resample})

"""
    return f"""
def resize(image):   # what embedlab does to every image before the processor (model.image.resize)
    w, h = image.size
    if max(w, h) > {policy['max_aspect']} * min(w, h):   # stretch to the aspect-ratio cap
        if w > h:
            h = w / {policy['max_aspect']}
        else:
            w = h / {policy['max_aspect']}
    scale = 1.0
    if max(w, h) > {policy['max_side']}:
        scale = {policy['max_side']} / max(w, h)
    if min(w, h) < {policy['min_side']}:   # takes precedence
        scale = {policy['min_side']} / min(w, h)
    return image.resize((int(w * scale), int(h * scale)), {resample})

"""


def _vllm_snippet(family, model_id: str) -> str:
    if family.has_chat:
        return f"""from PIL import Image
from transformers import AutoTokenizer
from vllm import LLM

MODEL = "{model_id}"
llm = LLM(model=MODEL, runner="pooling")   # older vLLM releases: task="embed"
tokenizer = AutoTokenizer.from_pretrained(MODEL)
image = Image.new("RGB", (84, 84), "red")
conversation = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": {json.dumps(EXAMPLE_QUERY_TEXT)}}}]}}]
prompt = tokenizer.apply_chat_template(conversation, task="query", tokenize=False)   # the same formatting
(output,) = llm.embed([{{"prompt": prompt, "multi_modal_data": {{"image": image}}}}])
print(output.outputs.embedding[:8])
"""
    return f"""from vllm import LLM

llm = LLM(model="{model_id}", runner="pooling")   # older vLLM releases: task="embed"
outputs = llm.embed({json.dumps(list(EXAMPLE_DOCUMENTS))})
print(outputs[0].outputs.embedding[:8])
"""


def _card_citations(spec, training: Mapping | None, has_st: bool) -> str:
    keys = ["mmeb", "infonce"]
    titles = []
    t = training or {}
    loss, model = t.get("loss") or {}, t.get("model") or {}
    if "HardnessWeighted" in str(loss.get("_target_", "")):
        keys.append("llave")
    if loss.get("matryoshka_dims") or spec.get("truncate_dim"):
        keys.append("matryoshka")
    if (model.get("gradcache") or {}).get("chunk_size"):
        keys.append("gradcache")
    if model.get("lora"):
        keys.append("lora")
    if has_st:
        keys.append("sbert")
    if (spec.get("prompt") or {}).get("name") == "hierarchical":
        titles.append(METHOD_TITLES["hierarchical"])
    if "saha" in str((t.get("sampler") or {}).get("_target_", "")).lower():
        titles.append(METHOD_TITLES["saha"])
    text = ["## Citation", "", "Methods used by this model (benchmark and data, loss, training techniques):", "",
            "```bibtex", "\n\n".join(CITATIONS[k] for k in keys), "```", ""]
    if titles:
        text += ["Also used: " + "; ".join(titles) + " (see embedlab's docs for the references).", ""]
    return "\n".join(text)


# ===================================================================================== training records
def training_record(cfg: Mapping, steps: int | None = None) -> dict:
    """The parts of a run's (resolved) config that describe how the model was trained, for the card."""
    model = dict(cfg.get("model") or {})
    keep_model = ("family", "path", "lora", "freeze_vision", "gradient_checkpointing", "dtype", "pooling", "normalize",
                  "max_length", "image", "gradcache", "optimizer", "scheduler", "temperature_lr")
    data = dict(cfg.get("data") or {})
    keep_data = ("source", "subsets", "split", "max_per_subset", "use_hard_negatives", "max_negatives_per_pair",
                 "batch_size", "bundled")
    trainer = dict(cfg.get("trainer") or {})
    keep_trainer = ("max_steps", "max_epochs", "precision", "devices", "num_nodes", "accumulate_grad_batches",
                    "gradient_clip_val")
    eval_data = dict(cfg.get("eval_data") or {})
    record = {
        "model": {k: model[k] for k in keep_model if k in model},
        "loss": dict(cfg.get("loss") or {}),
        "prompt": dict(cfg.get("prompt") or {}),
        "data": {k: data[k] for k in keep_data if k in data},
        "sampler": dict(cfg.get("sampler") or {}),
        "trainer": {k: trainer[k] for k in keep_trainer if k in trainer},
        "seed": cfg.get("seed"),
        "eval_data": {"source": eval_data.get("source"), "bundled": bool(eval_data.get("bundled")),
                      "datasets": list(eval_data.get("datasets") or [])} if eval_data else {},
    }
    if record["data"].get("bundled"):
        record["data"]["bundled"] = True
    if steps is not None:
        record["steps"] = int(steps)
    return record


def lenient_container(cfg) -> dict:
    """A saved Hydra config as plain containers, resolving what resolves outside the run (`${hydra:…}` does not:
    such values stay as their raw interpolation strings)."""
    from omegaconf import DictConfig, ListConfig

    def walk(node):
        if isinstance(node, DictConfig):
            out = {}
            for key in node.keys():
                try:
                    value = node[key]
                except Exception:
                    value = node._get_node(key)._value()
                out[str(key)] = walk(value)
            return out
        if isinstance(node, ListConfig):
            out = []
            for i in range(len(node)):
                try:
                    value = node[i]
                except Exception:
                    value = node._get_node(i)._value()
                out.append(walk(value))
            return out
        return node

    return walk(cfg)


def write_run_card(run_dir: str | Path, cfg) -> Path | None:
    """train.py's call after the final evaluation: rewrite `<run_dir>/embedder/README.md` with the run's training
    record and the MMEB table of `<run_dir>/eval/results.json` (no-op when no Embedder was saved)."""
    run_dir = Path(run_dir)
    embedder_dir = run_dir / "embedder"
    if not (embedder_dir / EMBEDDER_FILE).is_file():
        return None
    return write_model_card(embedder_dir, training=training_record(lenient_container(cfg), _run_steps(run_dir)),
                            results=_read_results(run_dir))


def _read_results(run_dir: Path) -> dict | None:
    path = run_dir / "eval" / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _run_steps(run_dir: Path, checkpoint: str | Path | None = None) -> int | None:
    checkpoint = Path(checkpoint) if checkpoint else run_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        return None
    from .checkpoint_io import checkpoint_metadata

    try:
        return int(checkpoint_metadata(checkpoint).get("global_step"))
    except (TypeError, ValueError, OSError):
        return None


def load_run_config(run_dir: Path):
    """A run's saved `.hydra/config.yaml`, with its `${hydra:…}` interpolations pointed at the run's own
    `.hydra/hydra.yaml` (the working directory the paths derive from, for instance), so that they resolve outside
    the Hydra app that wrote them. `${embedlab_cwd:}` (paths.root_dir) is the run's `hydra.runtime.cwd` there too,
    not the directory of the process reading it."""
    from omegaconf import OmegaConf

    text = (run_dir / ".hydra" / "config.yaml").read_text()
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if not hydra_file.is_file():
        return OmegaConf.create(text)
    cfg = OmegaConf.create(text.replace("${hydra:", "${hydra.").replace("${embedlab_cwd:}", "${hydra.runtime.cwd}"))
    runtime = OmegaConf.load(hydra_file)
    OmegaConf.set_struct(cfg, False)
    cfg.hydra = runtime.hydra
    return cfg


def run_dir_of_checkpoint(checkpoint: str | Path) -> Path | None:
    """`<run>/checkpoints/x.ckpt` → `<run>` when it holds the run's Hydra config."""
    run_dir = Path(checkpoint).resolve().parent.parent
    return run_dir if (run_dir / ".hydra" / "config.yaml").is_file() else None


def card_inputs_for_checkpoint(checkpoint: str | Path, run_dir: str | Path | None = None,
                               results: str | Path | None = None) -> tuple[dict | None, dict | None]:
    """(training record, MMEB results) for export.py: from the checkpoint's run directory (its `.hydra/config.yaml`,
    `eval/results.json`) unless given; the step count comes from the checkpoint itself."""

    run_dir = Path(run_dir) if run_dir else run_dir_of_checkpoint(checkpoint)
    training = None
    if run_dir is not None and (run_dir / ".hydra" / "config.yaml").is_file():
        cfg = lenient_container(load_run_config(run_dir))
        training = training_record(cfg, _run_steps(run_dir, checkpoint))
    result_dict = None
    if results is not None:
        result_dict = json.loads(Path(results).read_text())
    elif run_dir is not None:
        result_dict = _read_results(run_dir)
    return training, result_dict


# ========================================================================================== the Hub
def hub_token(repo_id: str, token: str | None = None) -> str:
    """The Hub token for uploading to `repo_id` (`token`, else HF_TOKEN), or a clear refusal."""
    token = token or os.environ.get("HF_TOKEN")
    if not token:
        raise PermissionError(f"pushing to the Hugging Face Hub ({repo_id}) needs a token with write access: set "
                              "HF_TOKEN in the environment (create one at https://huggingface.co/settings/tokens); "
                              "nothing was uploaded")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise ValueError(f"--push-to-hub expects ORG/NAME (or USER/NAME), got {repo_id!r}")
    return token


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Create (or reuse) the model repo `repo_id` and upload `directory` through huggingface_hub; returns the URL."""
    from huggingface_hub import HfApi

    token = hub_token(repo_id, token)
    directory = Path(directory)
    if not (directory / EMBEDDER_FILE).is_file():
        raise FileNotFoundError(f"{directory} is not an Embedder directory ({EMBEDDER_FILE} missing); export first")
    api = HfApi(token=token)
    repo = api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(directory),
                      commit_message=commit_message or f"Upload embedlab model {directory.name}")
    return str(getattr(repo, "url", None) or f"https://huggingface.co/{repo_id}")
