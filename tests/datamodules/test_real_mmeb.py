"""Acceptance: a local snapshot in the hub layouts of TIGER-Lab/MMEB-train and MMEB-eval holding every real row shape
— WebQA queries with <|image_1|> and no image (train and eval), empty items, NaN negatives as pandas writes them,
both training splits, an eval dataset of the V2 copy with instruction columns — trains and evaluates end to end
through `python train.py data=mmeb_train data.source=<snapshot> …`, with the skipped rows in the summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
NAN = float("nan")


def _images(root: Path, subset: str, n: int) -> list[str]:
    (root / "images" / subset).mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rel = f"images/{subset}/{i}.png"
        im = Image.new("RGB", (40 + 4 * i, 40), ((37 * i) % 255, (91 * i) % 255, 120))
        im.paste((255, 255, 255), (i % 20, i % 20, i % 20 + 10, i % 20 + 10))
        im.save(root / rel)
        paths.append(rel)
    return paths


def build_train_snapshot(root: Path, write_repo) -> Path:
    n = 12
    labels = ["dog", "cat", "bird", "car"]
    img = _images(root, "ImageNet_1K", n)
    imagenet = pa.table({
        "qry": ["<|image_1|>\nRepresent the given image for classification"] * n,
        "qry_image_path": img,
        "pos_text": [labels[i % 4] for i in range(n)],
        "pos_image_path": [""] * n,
        "neg_text": pa.array([NAN] * n, pa.float64()),        # pandas wrote "no negative" as NaN (a float column)
        "neg_image_path": pa.array([NAN] * n, pa.float64()),
    })
    img = _images(root, "WebQA", n)
    webqa = pa.table({   # MMEB-train WebQA: the query names an image it does not have
        "qry": [f"<|image_1|>\nFind a Wikipedia image that answers this question: who is person {i}?" for i in range(n)],
        "qry_image_path": [""] * n,
        "pos_text": [f"<|image_1|>\nRepresent the given Wikipedia image with related text information: person {i}"
                     for i in range(n)],
        "pos_image_path": img,
        "neg_text": [""] * n,
        "neg_image_path": [""] * n,
    })
    img = _images(root, "MSCOCO_t2i", n)
    coco_q = [f"Find me an everyday image that matches the given caption: a red circle {i}" for i in range(n)]
    coco_q[3] = ""                      # an empty query: skipped, as the reference skips it
    coco = pa.table({
        "qry": coco_q,
        "qry_image_path": [""] * n,
        "pos_text": ["<|image_1|>\nRepresent the given image."] * (n - 1) + [""],
        "pos_image_path": img[:-1] + [""],  # ... and an empty positive
        "neg_text": [""] * n,
        "neg_image_path": [""] * n,
    })
    subsets = {"ImageNet_1K": imagenet, "WebQA": webqa, "MSCOCO_t2i": coco}
    return write_repo(root, {name: {"original": t, "diverse_instruction": t} for name, t in subsets.items()})


def build_eval_snapshot(root: Path, write_repo) -> Path:
    n = 6
    labels = ["dog", "cat", "bird", "car"]
    img = _images(root, "ImageNet-1K", n)
    imagenet = pa.table({
        "qry_text": ["<|image_1|>\nRepresent the given image for classification"] * n,
        "qry_img_path": img,
        "tgt_text": [[labels[i % 4]] + [lab for lab in labels if lab != labels[i % 4]] for i in range(n)],
        "tgt_img_path": [[""] * 4 for _ in range(n)],
    })
    img = _images(root, "WebQA", n)
    webqa = pa.table({
        "qry_text": [f"<|image_1|>\nFind a Wikipedia image that answers this question: who is person {i}?"
                     for i in range(n)],
        "qry_img_path": [""] * n,
        "tgt_text": [[f"<|image_1|>\nRepresent the given Wikipedia image with related text information: person {j}"
                      for j in [i] + [k for k in range(n) if k != i][:3]] for i in range(n)],
        "tgt_img_path": [[img[j] for j in [i] + [k for k in range(n) if k != i][:3]] for i in range(n)],
    })
    img = _images(root, "MSCOCO_t2i", n)
    coco_t = [["<|image_1|>\nRepresent the given image."] * 3 for _ in range(n)]
    coco_t[2][1] = ""                      # an empty candidate (no text, no image): the row is skipped
    coco_p = [[img[i], img[(i + 1) % n], img[(i + 2) % n]] for i in range(n)]
    coco_p[2][1] = ""
    coco = pa.table({"qry_text": [f"Find me an everyday image that matches the given caption: circle {i}"
                                  for i in range(n)], "qry_img_path": [""] * n, "tgt_text": coco_t,
                     "tgt_img_path": coco_p})
    img = _images(root, "OK-VQA", n)
    okvqa = pa.table({   # the V2 image-task copy: instruction columns apart (ziyjiang/MMEB_Test_Instruct)
        "qry_inst": ["<|image_1|> Represent the given image with the following question:"] * n,
        "qry_text": [f"How many things are there in picture {i}?" for i in range(n)],
        "qry_img_path": img,
        "tgt_inst": [""] * n,
        "tgt_text": [[str(i), str(i + 1), str(i + 2)] for i in range(n)],
        "tgt_img_path": [["", "", ""] for _ in range(n)],
    })
    datasets = {"ImageNet-1K": imagenet, "WebQA": webqa, "MSCOCO_t2i": coco, "OK-VQA": okvqa}
    return write_repo(root, {name: {"test": t} for name, t in datasets.items()})


DATASETS = ("{ImageNet-1K: {meta_task: Classification, split: IND}, WebQA: {meta_task: Retrieval, split: IND}, "
            "MSCOCO_t2i: {meta_task: Retrieval, split: IND}, OK-VQA: {meta_task: VQA, split: IND}}")


def _overrides(train_root: Path, eval_root: Path) -> list[str]:
    return ["data=mmeb_train", f"data.source={train_root}", f"data.image_root={train_root}",
            "data.subsets=[ImageNet_1K,WebQA,MSCOCO_t2i]", "data.split=diverse_instruction", "data.batch_size=8",
            "data.num_workers=0", "data.pin_memory=false", "eval_data=mmeb_eval", f"eval_data.source={eval_root}",
            f"eval_data.image_root={eval_root}", "~eval_data.datasets", f"+eval_data.datasets={DATASETS}",
            "model.image.min_pixels=1568", "model.image.max_pixels=3136", "trainer.max_steps=2",
            "trainer.enable_progress_bar=false", "evaluate_before=false", "eval.batch_size=16", "logger=csv"]


def _check(run_dir: Path, log: str) -> None:
    summary = (run_dir / "summary.txt").read_text()
    assert "Training rows skipped:\nMSCOCO_t2i: 2 rows skipped (empty_positive 1, empty_query 1)" in summary
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["datasets"]) == {"ImageNet-1K", "WebQA", "MSCOCO_t2i", "OK-VQA"}
    assert results["datasets"]["MSCOCO_t2i"]["num_queries"] == 5   # the row with an empty candidate is skipped
    assert results["datasets"]["WebQA"]["num_queries"] == 6         # placeholder-without-image queries are kept
    assert "dataset MSCOCO_t2i (split test): skipped 1 of 6 rows as the reference skips them (empty_candidate: 1)" in log
    assert "dataset OK-VQA: instruction columns composed as VLM2Vec-V2's image_qa parser does" in log
    assert "subset WebQA (split diverse_instruction): 12 rows hold <|image_1|> without an image; kept" in log


def test_train_and_evaluate_a_snapshot_in_the_hub_layouts(tmp_path, write_repo, compose_cfg, caplog, monkeypatch):
    """The run below, in process (the composed config and `train.run` are what `python train.py` runs)."""
    import logging

    from training import job as train

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    train_root = build_train_snapshot(tmp_path / "MMEB-train", write_repo)
    eval_root = build_eval_snapshot(tmp_path / "MMEB-eval", write_repo)
    caplog.set_level(logging.INFO)
    train.run(compose_cfg("train", _overrides(train_root, eval_root)))
    _check(tmp_path / "run", caplog.text)


@pytest.mark.slow
def test_train_py_command_on_a_snapshot_in_the_hub_layouts(tmp_path, write_repo):
    """`python train.py data=mmeb_train data.source=<snapshot> …` as a user types it (a fresh process, ~20 s)."""
    train_root = build_train_snapshot(tmp_path / "MMEB-train", write_repo)
    eval_root = build_eval_snapshot(tmp_path / "MMEB-eval", write_repo)
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *_overrides(train_root, eval_root), f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf_cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    _check(run_dir, (run_dir / "train.log").read_text())
