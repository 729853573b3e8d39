"""Every published recipe (conf/experiment/*) composes and runs one training step on CPU with tiny
overrides (its tiny family model, the small bundled data, one device), so no recipe rots."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import job as train

CONF = Path(__file__).resolve().parents[2] / "conf"
RECIPES = ["vlm2vec_qwen2vl_2b", "llave_0.5b", "llave_2b", "llave_7b", "saha_qwen2vl_2b"]
TINY = {"qwen2_vl": "tiny_qwen2vl", "llava_onevision": "tiny_llava_ov"}


def test_recipe_files_exist():
    assert set(RECIPES) <= {p.stem for p in (CONF / "experiment").glob("*.yaml")}


# LLaVE-2B and -7B are LLaVE-0.5B's recipe at other sizes (same family, prompt and loss): slow-marked to keep
# `make test` short; `make test-all` runs them.
@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.slow) if r in ("llave_2b", "llave_7b") else r
                                    for r in RECIPES])
def test_recipe_runs_one_step(recipe, compose_cfg, tiny_cfg, tmp_path):
    full = compose_cfg("train", [f"experiment={recipe}"])
    assert full.model.path, "the recipe names a real checkpoint"
    tiny = [f"experiment={recipe}", f"model={TINY[full.model.family]}", "data=bundled", "eval_data=bundled",
            "trainer=cpu", "trainer.devices=1", "trainer.max_steps=1", "trainer.max_epochs=-1",
            "trainer.val_check_interval=1", "trainer.check_val_every_n_epoch=null", "trainer.limit_val_batches=1",
            "evaluate_before=false", "evaluate_after=false", "save_embedder=false"]
    if full.model.family == "qwen2_vl":  # the recipes' reference resolutions (1344², 448²) capped for the tiny model
        tiny += ["model.image.min_pixels=3136", "model.image.max_pixels=12544"]
    if full.get("sampler", {}).get("_target_", "").endswith("SaHaBatchSampler"):
        from mining import job as mine

        mined = tmp_path / "mined"
        bundled = tiny_cfg()[:3]  # the bundled.* overrides of the session's small dataset
        mine.run(compose_cfg("mine", [*bundled, "model=tiny_qwen2vl", f"mining.out_dir={mined}", "mining.k=15",
                                      "mining.pool_mult=3"]))
        tiny += [f"sampler.clusters_dir={mined}", "data.batch_size=16"]
    cfg = compose_cfg("train", tiny_cfg(tiny))
    # the recipe's own choices survive the tiny overrides
    assert cfg.loss._target_ == full.loss._target_ and cfg.model.lora == full.model.lora
    assert cfg.model.gradcache.chunk_size == full.model.gradcache.chunk_size
    train.validate_config(cfg)
    train.run(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
