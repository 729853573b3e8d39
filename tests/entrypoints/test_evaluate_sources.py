"""evaluate.py scores exactly one model, named by the run: conflicting sources are refused (a model= or
prompt= that a checkpoint or saved Embedder would silently ignore), `dtype=` applies to every source, and
the run directory is named after what was scored."""

from __future__ import annotations

from pathlib import Path

import lightning
import pytest
import torch

from embedders import EmbeddingModule
from embedders.loading import load_embedder
from evaluation import job as evaluate

TINY = {"text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                 "num_key_value_heads": 1}, "vision": {"depth": 1, "embed_dim": 32, "num_heads": 2}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A training checkpoint and a saved Embedder of the same tiny model (no training needed)."""
    root = tmp_path_factory.mktemp("sources")
    module = EmbeddingModule(family="qwen2_vl", config=TINY, image={"min_pixels": 3136, "max_pixels": 3136},
                             optimizer={"_target_": "torch.optim.AdamW", "_partial_": True})
    ckpt = root / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    embedder_dir = module.embedder.save_pretrained(root / "run" / "embedder")
    return ckpt, Path(embedder_dir)


@pytest.mark.parametrize("conflict", [["model=qwen2vl_2b"], ["prompt=hierarchical"], ["model.max_length=64"]])
def test_a_checkpoint_with_a_model_or_prompt_is_refused(compose_cfg, saved, conflict):
    ckpt, embedder_dir = saved
    for source in (f"ckpt_path={ckpt}", f"embedder_dir={embedder_dir}"):
        cfg = compose_cfg("evaluate", [source, *conflict])
        with pytest.raises(ValueError, match=f"scores the model saved there.*{conflict[0]} would be ignored"):
            evaluate.run(cfg)
    with pytest.raises(ValueError, match="both embedder_dir=.* and ckpt_path=.* are set"):
        evaluate.run(compose_cfg("evaluate", [f"ckpt_path={ckpt}", f"embedder_dir={embedder_dir}"]))


def test_dtype_applies_to_every_source(compose_cfg, saved):
    ckpt, embedder_dir = saved
    for source in (f"ckpt_path={ckpt}", f"embedder_dir={embedder_dir}", f"model.config={TINY}".replace("'", "")):
        embedder = load_embedder(compose_cfg("evaluate", [source, "dtype=bfloat16"]))
        dtypes = {p.dtype for p in embedder.parameters()}
        assert dtypes == {torch.bfloat16}, (source, dtypes)


def test_evaluate_runs_are_named_after_what_they_score(compose_cfg, saved):
    ckpt, embedder_dir = saved
    assert compose_cfg("evaluate", [f"ckpt_path={ckpt}"]).run_name == "ckpt-run-last"
    assert compose_cfg("evaluate", [f"embedder_dir={embedder_dir}"]).run_name == "embedder-run"
    assert compose_cfg("evaluate", ["model=minilm", "model.path=/opt/models/all-MiniLM-L6-v2"]).run_name == \
        "minilm-all-MiniLM-L6-v2_plain"
    assert compose_cfg("evaluate", ["model=qwen2vl_2b", "prompt=hierarchical", "dtype=bfloat16"]).run_name == \
        "qwen2vl_2b_hierarchical_dtype-bfloat16"
