"""A Hydra-composed train + evaluate run of a few steps on the bundled data, through the real entry points."""

from __future__ import annotations

import json

import evaluate
import train


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
        assert set(d) == {"precision@1", "num_queries", "meta_task", "split", "tied_rows", "tie_decided", "duplicate_gt", "collapsed", "skipped"} and d["split"] in ("IND", "OOD")
    assert (out / "eval" / "results.md").read_text().startswith("| Model | Cls | VQA | Ret | Grd | IND | OOD | Overall |")
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "csv" / "metrics.csv").read_text().count("train/loss") == 1
    assert list((out / "similarity").glob("*.png"))

    # the saved Embedder and the checkpoint both score the same as the end of training
    for key, value in (("embedder_dir", out / "embedder"), ("ckpt_path", out / "checkpoints" / "last.ckpt")):
        ecfg = compose_cfg("evaluate", [f"bundled.root={cfg.bundled.root}", "bundled.train_per_subset="
                                        f"{cfg.bundled.train_per_subset}", f"bundled.eval_per_dataset="
                                        f"{cfg.bundled.eval_per_dataset}", f"{key}={value}"])
        r = evaluate.run(ecfg)
        assert r["overall"] == outcome["after"]["overall"], key
