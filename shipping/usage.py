"""The usage section of a model card: runnable snippets for embedlab, sentence-transformers, plain transformers
(reproducing embedlab's formatting, image resizing and positions) and vLLM."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

from datamodules.schema import PLACEHOLDER
from embedders.backbones import get_family
from embedders.saving import stock_differences

#: Example inputs of the usage snippets (the card's transformers snippet is executed by the tests on them).
EXAMPLE_QUERY_TEXT = f"{PLACEHOLDER}\nRepresent the given image with the following question: What is the shape?"
EXAMPLE_DOCUMENTS = ("a red square", "a blue circle")
EXAMPLE_TEXT_QUERY = "Find a caption for a red square in the middle"


def is_hub_id(value) -> bool:
    return (isinstance(value, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", value) is not None
            and not Path(value).exists())


def hidden_size(config: Mapping) -> int | str:
    for source in (config, config.get("text_config") or {}):
        if "hidden_size" in source:
            return source["hidden_size"]
    return "?"


def card_usage(spec, config, model_id: str, has_st: bool) -> str:
    family = get_family(spec["family"])
    truncate = spec.get("truncate_dim")
    multimodal = family.takes_images
    fetch = ("from huggingface_hub import snapshot_download\n\nembedder = Embedder.from_pretrained("
             f"snapshot_download(\"{model_id}\"))" if is_hub_id(model_id)
             else f"embedder = Embedder.from_pretrained(\"{model_id}\")")
    out = ["## Usage", "", "### embedlab", "", "```python", "from PIL import Image", "", "from embedders import Embedder",
           ""]
    out += fetch.splitlines() if is_hub_id(model_id) else [fetch]
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
                "`modules.json`." + (f" It returns the full {hidden_size(config)}-dimensional vector: keep the first "
                                     f"{truncate} and re-normalise." if truncate else ""), ""]
    else:
        out += ["### transformers", "",
                f"`AutoModel.from_pretrained` reads the backbone, but this family (`{family.name}`) turns inputs into "
                "one vector in embedlab's own way (see `embedders/backbones/` in embedlab), which no stock loader "
                "reproduces: load it with embedlab as above.", ""]
    out += ["### MTEB / MIEB (with embedlab installed)", "", "```bash",
            f"python -m shipping.mteb {model_id if not is_hub_id(model_id) else '<local copy>'} "
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
        keep = (f"    if min(image.size) >= {policy['below']}:   # only images with a side under {policy['below']} px\n"
                "        return image\n") if policy.get("below") is not None else ""
        return f"""
def resize(image):   # what embedlab does to every image before the processor (model.image.resize)
{keep}    return image.resize(({w}, {h}), {resample})

"""
    if policy["mode"] == "smart":
        f, lo, hi = policy["factor"], policy["min_pixels"], policy["max_pixels"]
        return f"""
import math

def resize(image):   # what embedlab does to every image before the processor (model.image.resize: qwen-vl-utils)
    w, h = image.size
    hb, wb = max({f}, round(h / {f}) * {f}), max({f}, round(w / {f}) * {f})
    if hb * wb > {hi}:
        beta = math.sqrt(h * w / {hi})
        hb, wb = math.floor(h / beta / {f}) * {f}, math.floor(w / beta / {f}) * {f}
    elif hb * wb < {lo}:
        beta = math.sqrt({lo} / (h * w))
        hb, wb = math.ceil(h * beta / {f}) * {f}, math.ceil(w * beta / {f}) * {f}
    if max(hb, wb) / min(hb, wb) > 200:
        hb, wb = (wb * 200, wb) if hb > wb else (hb, hb * 200)
    return image.resize((wb, hb), {resample})

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
