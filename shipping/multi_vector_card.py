"""The model card's words for a multi-vector (late-interaction) model: what it is, its storage, and how to use it in
embedlab and in sentence-transformers' `MultiVectorEncoder` (the saved layout: `embedders/multi_vector_saving.py`)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from embedders.backbones import get_family

from .usage import EXAMPLE_DOCUMENTS, EXAMPLE_QUERY_TEXT, EXAMPLE_TEXT_QUERY, is_hub_id

TAGS = ("multi-vector", "late-interaction", "colbert")


def is_multi_vector(spec: Mapping) -> bool:
    return spec.get("pooling") == "multi_vector"


def pooling_row(spec: Mapping) -> str:
    head = spec.get("multi_vector") or {}
    dim = spec.get("truncate_dim") or head.get("dim", 128)
    similarity = head.get("similarity", "maxsim")
    skip = head.get("skip_tokens")
    return (f"**multi-vector** (late interaction, ColPali-style): one {dim}-dimensional L2-normalised vector per "
            f"token, scored with {'MaxSim' if similarity == 'maxsim' else 'MeanMaxSim (MaxSim / query tokens)'}"
            + (f"; tokens never scored: {skip if isinstance(skip, str) else ', '.join(skip)}" if skip else ""))


def multi_vector_usage(spec: Mapping, model_id: str) -> str:
    family = get_family(spec["family"])
    multimodal = family.takes_images
    head = spec.get("multi_vector") or {}
    dim = spec.get("truncate_dim") or head.get("dim", 128)
    fetch = (f"embedder = Embedder.from_pretrained(snapshot_download(\"{model_id}\"))" if is_hub_id(model_id)
             else f"embedder = Embedder.from_pretrained(\"{model_id}\")")
    out = ["## Usage", "",
           "A multi-vector model: every input becomes one vector per token (here "
           f"{dim} dimensions each), and a query is scored against a document with MaxSim, the sum over the query's "
           "tokens of their best match among the document's tokens. Store a document's vectors (tokens × "
           f"{dim} × 4 bytes in float32); token pooling and int8/binary quantisation shrink that "
           "(`evaluate.py eval.token_pooling=2 eval.quantize=int8`).", "",
           "### embedlab", "", "```python", "from PIL import Image", ""]
    if is_hub_id(model_id):
        out += ["from huggingface_hub import snapshot_download", ""]
    out += ["from embedders import Embedder", "from losses import maxsim", "", fetch]
    if multimodal:
        out += ["image = Image.new(\"RGB\", (84, 84), \"red\")",
                f"query = embedder.encode([{json.dumps(EXAMPLE_QUERY_TEXT)}], images=[image], side=\"query\")"]
    else:
        out += [f"query = embedder.encode([{json.dumps(EXAMPLE_TEXT_QUERY)}], side=\"query\")"]
    out += [f"docs = embedder.encode({json.dumps(list(EXAMPLE_DOCUMENTS))}, side=\"target\")",
            "# [N, tokens, dim] tensors; all-zero rows are padding (no token)",
            f"print(maxsim(query, docs{', mean=True' if head.get('similarity') == 'meanmaxsim' else ''}))",
            "```", "",
            "### sentence-transformers (`MultiVectorEncoder`)", "", "```python", "from PIL import Image",
            "from sentence_transformers import MultiVectorEncoder", "",
            f"model = MultiVectorEncoder(\"{model_id}\")"]
    if multimodal:
        out += ["image = Image.new(\"RGB\", (84, 84), \"red\")",
                f"query = model.encode_query([{{\"text\": {json.dumps(EXAMPLE_QUERY_TEXT)}, \"image\": image}}])"]
    else:
        out += [f"query = model.encode_query([{json.dumps(EXAMPLE_TEXT_QUERY)}])"]
    out += [f"docs = model.encode_document({json.dumps(list(EXAMPLE_DOCUMENTS))})",
            "print(model.similarity(query, docs))   # one (tokens, dim) tensor per input; MaxSim scores", "```", "",
            "`encode_query` / `encode_document` give embedlab's token vectors (`side=\"query\"` / `\"target\"`, "
            "without the padding rows; tested to 1e-5), and `similarity` its scores. The modules are Transformer → "
            "Dense (the projection) → Normalize → MultiVectorMask (the tokens never scored)"
            + (f"; `truncate_dim` is {spec['truncate_dim']}" if spec.get("truncate_dim") else "") + ".", "",
            "vLLM and plain transformers have no multi-vector pooling of this layout: use embedlab or "
            "sentence-transformers. MTEB through `shipping.mteb` scores single-vector models only.", ""]
    return "\n".join(out)
