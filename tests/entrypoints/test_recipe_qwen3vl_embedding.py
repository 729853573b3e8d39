"""The leaders' three-stage recipe (docs/recipes.md, `make recipe-cpu`) on CPU with tiny models: contrastive training
with Qwen3-VL-Embedding's loss options → teacher scores → distillation from them → merge of stages 1 and 2 →
evaluation of the merged model; and the GPU version composes into the same stages."""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import instantiate

import export
from embedders import Embedder
from evaluation import job as evaluate
from losses import Distillation, InfoNCE
from mining import job as mine
from operations import hydra_app as runtime
from training import job as train

TINY_TRAIN = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.log_every_n_steps=1",
              "trainer.enable_progress_bar=false", "data.batch_size=8", "data.val_batch_size=8",
              "data.val_per_subset=4", "evaluate_before=false", "evaluate_after=false", "logger=csv",
              "data.subsets=[ShapeCls,ShapeT2I]", "data.max_per_subset=16", "callbacks.model_checkpoint=null", "trainer.limit_val_batches=1"]


def test_cpu_recipe_contrastive_distil_merge_evaluate(tiny_cfg, tmp_path):
    recipe = tmp_path / "recipe"
    bundled = [o for o in tiny_cfg() if o.startswith("bundled.")]  # the session's small bundled data

    # Stage 1: contrastive, Qwen3-VL-Embedding's loss options.
    cfg = runtime.compose_config("train", ["experiment=qwen3vl_embedding_recipe_cpu", f"recipe_dir={recipe}", *bundled,
                                           *TINY_TRAIN], recipe / "1_contrastive")
    loss = instantiate(cfg.loss)
    assert type(loss) is InfoNCE and loss.false_negative_margin == 0.1 and loss.query_query and loss.document_document
    train.run(cfg)
    stage1 = recipe / "1_contrastive" / "embedder"
    assert (stage1 / "embedder.json").is_file()

    # Teacher scores of the same rows (the teacher: stage 1's model).
    scored = mine.run(runtime.compose_config("mine", [
        *bundled, "mining.method=teacher", f"embedder_dir={stage1}", f"mining.out_dir={recipe / 'teacher'}",
        "data.subsets=[ShapeCls,ShapeT2I]", "data.max_per_subset=16", "mining.progress=false", "device=cpu"], recipe / "teacher_run"))
    assert [r["status"] for r in scored["summary"]] == ["scored", "scored"]

    # Stage 2: from stage 1's Embedder, InfoNCE (the same options) + KL distillation.
    cfg = runtime.compose_config("train", ["experiment=qwen3vl_embedding_recipe_distill_cpu", f"recipe_dir={recipe}",
                                           *bundled, *TINY_TRAIN], recipe / "2_distill")
    assert cfg.model.path == str(stage1) and cfg.data.teacher_scores == str(recipe / "teacher")
    assert cfg.loss._target_ == "losses.Distillation" and cfg.loss.false_negative_margin == 0.1
    train.run(cfg)
    stage2 = recipe / "2_distill" / "embedder"
    logged = (recipe / "2_distill" / "csv").rglob("metrics.csv")
    assert any("train/loss" in p.read_text() for p in logged)

    # Stage 3: merge, then score the merged model like any other.
    merged = recipe / "3_merged"
    assert export.main(["--merge", str(stage1), str(stage2), "--weights", "0.5,0.5", "--out", str(merged)]) == 0
    a, b, m = (Embedder.from_pretrained(p) for p in (stage1, stage2, merged))
    key = next(k for k, v in a.backbone.state_dict().items() if v.is_floating_point()
               and not torch.equal(v, b.backbone.state_dict()[k]))
    want = 0.5 * a.backbone.state_dict()[key].double() + 0.5 * b.backbone.state_dict()[key].double()
    assert torch.allclose(m.backbone.state_dict()[key].double(), want, atol=1e-7)
    results = evaluate.run(runtime.compose_config("evaluate", [f"embedder_dir={merged}", *bundled, "eval.progress=false",
                                                               "device=cpu", "eval_data.max_rows=6"], recipe / "3_merged_eval"))
    assert 0 <= results["overall"] <= 100
    assert json.loads((recipe / "3_merged_eval" / "results.json").read_text())["overall"] == results["overall"]


@pytest.mark.parametrize("stage", ["qwen3vl_embedding_recipe", "qwen3vl_embedding_recipe_distill"])
def test_gpu_recipe_composes(compose_cfg, stage):
    cfg = compose_cfg("train", [f"experiment={stage}"])
    assert cfg.model.family == "qwen3_vl" and cfg.prompt.name == "qwen3vl_embedding"
    assert cfg.trainer.devices == 8 and cfg.model.gradcache.chunk_size == 8
    loss = instantiate(cfg.loss)
    assert loss.false_negative_margin == 0.1 and loss.query_query and loss.document_document
    if stage.endswith("distill"):
        assert isinstance(loss, Distillation) and loss.contrastive_weight() == 1.0
        assert cfg.model.path.endswith("recipe/1_contrastive/embedder") and cfg.data.teacher_scores.endswith("teacher")
    else:
        assert cfg.model.path == "Qwen/Qwen3-VL-2B-Instruct"
    train.validate_config(cfg)
