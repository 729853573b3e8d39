"""The Hub model card of a saved Embedder (`README.md`): YAML metadata, base model, data, loss and
hyperparameters, the MMEB table of `eval/results.json`, usage in embedlab / sentence-transformers / transformers /
vLLM (`shipping.usage`), citations."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from datamodules.schema import PLACEHOLDER
from embedders.backbones import get_family
from embedders.prompts import PromptFormat, image_token_for, placeholder_mode
from embedders.saving import CARD_FILE, EMBEDDER_FILE
from evaluation.mmeb import render_table
from evaluation.mmeb_v2 import render_table_v2

from .multi_vector_card import TAGS as MULTI_VECTOR_TAGS
from .multi_vector_card import is_multi_vector, multi_vector_usage, pooling_row
from .usage import (
    card_usage,
    hidden_size,
    is_hub_id,
)

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
                     license: str | None = None, model_id: str | None = None,
                     final_directory: str | Path | None = None) -> Path:
    """(Re)write `directory/README.md`: Hub YAML metadata and the card text, from the directory's own files plus the
    training record (`training_record`) and the MMEB results (the `results.json` dict) when known.
    `final_directory`: where the directory will live when it is written elsewhere first (the card names that)."""
    directory = Path(directory)
    spec = json.loads((directory / EMBEDDER_FILE).read_text())
    config = json.loads((directory / "config.json").read_text())
    has_st = (directory / "modules.json").is_file()
    shown = Path(final_directory) if final_directory is not None else directory
    name = model_id or shown.name
    base = spec.get("base_model")
    license = license or _base_model_license(base) or "other"
    metadata = _card_metadata(spec, config, training, results, license, has_st, name)
    sections = [
        f"# {name}\n",
        _card_summary(spec, config, base, has_st),
        _card_training(training),
        _card_results(results, name, training),
        multi_vector_usage(spec, model_id or str(shown)) if is_multi_vector(spec)
        else card_usage(spec, config, model_id or str(shown), has_st),
        _card_citations(spec, training, has_st),
    ]
    text = "---\n" + _yaml(metadata) + "---\n\n" + "\n".join(s for s in sections if s)
    path = directory / CARD_FILE
    path.write_text(text)
    return path


def _yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


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
    if is_hub_id(spec.get("base_model")):
        meta["base_model"] = spec["base_model"]
    data = (training or {}).get("data") or {}
    if is_hub_id(data.get("source")):
        meta["datasets"] = [data["source"]]
    tags = ["embedlab", "embeddings", "feature-extraction"]
    if has_st:
        tags.insert(1, "sentence-transformers")
    if takes_images:
        tags.append("multimodal-embedding")
    if is_multi_vector(spec):
        tags += list(MULTI_VECTOR_TAGS)
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
            "dataset": {"name": "MMEB-eval" if is_hub_id(eval_source) else "bundled eval (embedlab)",
                        "type": eval_source if is_hub_id(eval_source) else "embedlab/bundled", "split": "test"},
            "metrics": metrics}]}]
    return meta


def _describe_base(spec, config, base) -> str:
    arch = (config.get("architectures") or ["?"])[0]
    if base is None:
        return f"randomly initialised `{arch}` (embedlab's tiny config of the real architecture; not pretrained)"
    if is_hub_id(base):
        return f"[`{base}`](https://huggingface.co/{base}) (`{arch}`)"
    return f"`{base}` (local directory; `{arch}`)"


def _card_summary(spec, config, base, has_st) -> str:
    family = get_family(spec["family"])
    prompt = PromptFormat.from_config(spec.get("prompt"))
    dim = (spec.get("multi_vector") or {}).get("dim", 128) if is_multi_vector(spec) else hidden_size(config)
    rows = [("Base model", _describe_base(spec, config, base)),
            ("Backbone family (embedlab)", f"`{spec['family']}`"),
            ("Pooling", pooling_row(spec) if is_multi_vector(spec) else
             {"last": "last token", "mean": "mean over tokens", "cls": "first token (CLS)",
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
    what = ("at once an embedlab Embedder (`embedder.json`), a transformers checkpoint (the backbone) and a "
            "sentence-transformers `MultiVectorEncoder` (`modules.json`: the projection, normalisation and scoring mask)"
            if has_st and is_multi_vector(spec) else
            "at once an embedlab Embedder (`embedder.json`), a transformers checkpoint, a sentence-transformers model "
            "and a vLLM pooling model (GPU; `config.json` keeps the architecture, `modules.json` names the pooling)"
            if has_st else "an embedlab Embedder (`embedder.json`) whose backbone is a transformers checkpoint")
    lines += ["", f"The directory is {what}.", ""]
    return "\n".join(lines)


def _describe_prompt(prompt, family) -> str:
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
    eval_data = (training or {}).get("eval_data") or {}
    source = eval_data.get("source")
    where = (f"`{source}`" if is_hub_id(source) else
             "embedlab's bundled offline eval sets (MMEB-eval schema)" if eval_data.get("bundled") else
             f"`{source}`" if source else "the eval datasets of the run")
    return ("## Evaluation (MMEB protocol)\n\n"
            f"Precision@1 ×100 on {where}: every unique query and candidate encoded once, a query is a hit when its "
            "highest-cosine candidate is the ground truth (index 0); Overall is the mean over datasets "
            "(the run's `eval/results.json`).\n\n" + (render_table_v2(results, name) if "modalities" in results else render_table(results, name)) + "\n")


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




def save_embedder(embedder, directory: str | Path) -> Path:
    """The shippable directory of `embedder`: what `Embedder.save_pretrained` writes (embedlab, transformers,
    sentence-transformers and vLLM layouts) plus its Hub model card, without training details (`run_card` and
    export.py add them)."""
    path = embedder.save_pretrained(directory)
    write_model_card(path)
    return path
