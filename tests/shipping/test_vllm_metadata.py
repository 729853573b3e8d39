"""vLLM-ready metadata (checked without vLLM, which needs a GPU): config.json keeps the architecture vLLM's registry
serves in pooling mode, the weights carry the hub checkpoint names that transformers' generation class reads (so
vLLM's name mapping for that class applies), and the sentence-transformers files give the pooling and normalisation
through both of vLLM's readers: the legacy one (module type `sentence_transformers.models.Pooling`, the first
`pooling_mode_*` flag that is true) and the current one (`pooling_mode` string)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shipping import save_embedder

#: Architectures vLLM serves with its pooling runner (registry entries and `as_embedding_model` conversions) that
#: embedlab's families produce.
VLLM_POOLING_ARCHITECTURES = {"Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
                              "LlavaOnevisionForConditionalGeneration", "BertModel"}
LEGACY_POOLING_TYPES = {"pooling_mode_lasttoken": "LAST", "pooling_mode_mean_tokens": "MEAN",
                        "pooling_mode_cls_token": "CLS"}
COMPACT_POOLING_TYPES = {"lasttoken": "LAST", "mean": "MEAN", "cls": "CLS"}


def vllm_legacy_pooling(directory: Path) -> tuple[str | None, bool]:
    """What vLLM's `get_pooling_config` (≤ 0.23) derives: the Pooling module by its legacy type name, the first key
    whose value is true, normalisation from a legacy Normalize module."""
    modules = json.loads((directory / "modules.json").read_text())
    pooling = next((m for m in modules if m["type"] == "sentence_transformers.models.Pooling"), None)
    normalize = any(m["type"] == "sentence_transformers.models.Normalize" for m in modules)
    if pooling is None:
        return None, normalize
    config = json.loads((directory / pooling["path"] / "config.json").read_text())
    first_true = next((k for k, v in config.items() if v is True), None)
    return LEGACY_POOLING_TYPES.get(first_true), normalize


def vllm_compact_pooling(directory: Path) -> str | None:
    modules = json.loads((directory / "modules.json").read_text())
    pooling = next(m for m in modules if m["type"].endswith("Pooling"))
    return COMPACT_POOLING_TYPES.get(json.loads((directory / pooling["path"] / "config.json").read_text())
                                     .get("pooling_mode"))


def _weight_names(directory: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.mark.parametrize("family,architecture", [("qwen2_vl", "Qwen2VLForConditionalGeneration"),
                                                 ("llava_onevision", "LlavaOnevisionForConditionalGeneration")])
def test_decoder_directories_for_vllm(tmp_path, tiny_embedder, family, architecture):
    from transformers import AutoModel, AutoModelForImageTextToText

    from embedders import Embedder

    out = save_embedder(tiny_embedder(family), tmp_path / "first")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [architecture] and architecture in VLLM_POOLING_ARCHITECTURES
    assert vllm_legacy_pooling(out) == ("LAST", True)
    assert vllm_compact_pooling(out) == "LAST"
    # The generation class reads every weight (only its LM head, which an embedding model does not have, is left to
    # initialise); the base class reads them with nothing missing or left over.
    _, info = AutoModelForImageTextToText.from_pretrained(str(out), output_loading_info=True)
    assert info["missing_keys"] == {"lm_head.weight"} and not info["unexpected_keys"]
    _, info = AutoModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any("lm_head" in k for k in _weight_names(out))
    # The architecture survives a reload and re-save (what a LoRA merge or an export of a loaded model does).
    again = save_embedder(Embedder.from_pretrained(out), tmp_path / "second")
    assert json.loads((again / "config.json").read_text())["architectures"] == [architecture]
    assert _weight_names(again) == _weight_names(out)


def test_text_encoder_directory_for_vllm(minilm_export):
    _, out = minilm_export
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    assert vllm_legacy_pooling(out) == ("MEAN", True)
    assert vllm_compact_pooling(out) == "MEAN"


def test_unnormalised_mean_pooling(tmp_path, tiny_embedder):
    out = save_embedder(tiny_embedder("qwen2_vl", pooling="mean", normalize=False), tmp_path / "m")
    assert vllm_legacy_pooling(out) == ("MEAN", False)
    assert json.loads((out / "config_sentence_transformers.json").read_text())["similarity_fn_name"] == "dot"
