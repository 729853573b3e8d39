"""A Hydra-composed train + evaluate run of a few steps on the bundled data, through the real entry points."""

from __future__ import annotations

import json

from evaluation import job as evaluate
from training import job as train


def test_train_then_evaluate(compose_cfg, tiny_cfg, tmp_path):
    cfg = compose_cfg("train", tiny_cfg(["eval.batch_size=32"]))
    outcome = train.run(cfg)
    out = tmp_path / "run"
    for side in ("before", "after"):
        r = outcome[side]
        assert 0.0 <= r["overall"] <= 100.0 and len(r["datasets"]) == 9
    results = json.loads((out / "eval" / "results.json").read_text())
    assert set(results) == {"overall", "IND", "OOD", "meta_tasks", "datasets", "failed"} and not results["failed"]
    assert set(results["meta_tasks"]) == {"Classification", "VQA", "Retrieval", "Grounding"}
    for d in results["datasets"].values():
        assert set(d) == {"precision@1", "num_queries", "meta_task", "split", "tied_rows", "tie_decided", "duplicate_gt", "collapsed", "skipped", "storage"} and d["split"] in ("IND", "OOD")
    assert (out / "eval" / "results.md").read_text().startswith("| Model | Cls | VQA | Ret | Grd | IND | OOD | Overall |")
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # The configured ModelCheckpoint is the only one: Lightning adds no default one under the logger's directory.
    assert {p.relative_to(out).parts[0] for p in out.rglob("*.ckpt")} == {"checkpoints"}
    assert (out / "csv" / "metrics.csv").read_text().count("train/loss") == 1
    assert list((out / "similarity").glob("*.png"))

    # the saved Embedder and the checkpoint both score the same as the end of training
    for key, value in (("embedder_dir", out / "embedder"), ("ckpt_path", out / "checkpoints" / "last.ckpt")):
        ecfg = compose_cfg("evaluate", [f"bundled.root={cfg.bundled.root}", "bundled.train_per_subset="
                                        f"{cfg.bundled.train_per_subset}", f"bundled.eval_per_dataset="
                                        f"{cfg.bundled.eval_per_dataset}", f"{key}={value}"])
        r = evaluate.run(ecfg)
        assert r["overall"] == outcome["after"]["overall"], key


def test_model_checkpoint_null_saves_no_checkpoint(compose_cfg, tiny_cfg, tmp_path):
    """callbacks.model_checkpoint=null (the real-text ablation's 48 runs): no checkpoint is written anywhere,
    not even Lightning's default one (a full copy of weights + optimizer state in the logger's directory)."""
    cfg = compose_cfg("train", tiny_cfg(["callbacks.model_checkpoint=null", "~eval_data", "trainer.max_steps=2"]))
    train.run(cfg)
    out = tmp_path / "run"
    assert (out / "csv" / "metrics.csv").read_text().count("train/loss") == 1  # it trained and logged
    assert not list(out.rglob("*.ckpt"))
