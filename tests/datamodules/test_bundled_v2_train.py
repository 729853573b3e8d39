"""The bundled MMEB-V2 training mix: video/document training rows parse, load (video files, frame folders, pages)
and collate into model inputs of the Qwen families; a suite built with the mix also serves evaluation."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules import MMEBDataModule
from datamodules.builders.bundled_v2 import TRAIN_SUBSETS, _is_complete, _manifest, ensure_bundled_v2
from datamodules.errors import DataError
from datamodules.samplers import ModalityBatchSampler
from datamodules.schema import parse_train_row
from embedders import Embedder


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return ensure_bundled_v2(tmp_path_factory.mktemp("v2train") / "bundled_v2", queries_per_dataset=2,
                             train_rows_per_subset=4)


def _datamodule(root, **kw):
    return MMEBDataModule(source=str(root / "train"), subsets=list(TRAIN_SUBSETS), image_root=str(root / "media"),
                          use_hard_negatives=False, max_negatives_per_pair=0, batch_size=4, **kw)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_mix_collates_and_trains_a_step(root, family):
    dm = _datamodule(root, num_frames=4)
    dm.setup("fit")
    by_subset = {s: [p for p in dm.train_pairs if p.subset == s] for s in TRAIN_SUBSETS}
    assert all(len(v) == 4 for v in by_subset.values())
    assert by_subset["ShapeVideoCaption"][0].positive.video.endswith(".mp4")
    assert by_subset["ShapeVideoQA"][0].query.video and not by_subset["ShapeVideoQA"][0].query.image
    torch.manual_seed(0)
    emb = Embedder.build(family, config={})
    dm.set_input_builder(emb.input_builder)
    collate = dm._collator()
    optim = torch.optim.SGD(emb.parameters(), lr=0.0)
    for subset, pairs in by_subset.items():
        batch = collate(pairs)
        q, t = batch["query"][0], batch["target"][0]
        video_side = {"ShapeVideoCaption": t, "ShapeVideoQA": q}.get(subset)
        if video_side is not None:
            assert video_side["video_grid_thw"].shape[0] == 4 and video_side["video_grid_thw"][0, 0] == 2  # 4 frames
        loss = torch.nn.functional.cross_entropy(emb(q) @ emb(t).T / 0.05, torch.arange(4))
        assert torch.isfinite(loss)
        loss.backward()
        if video_side is not None:  # gradients reach the vision tower through the video features
            grads = [p.grad for n, p in emb.named_parameters() if ".visual." in f".{n}" and p.grad is not None]
            assert grads and any(float(g.abs().sum()) > 0 for g in grads)
        optim.zero_grad()


def test_modality_groups(root):
    dm = _datamodule(root)
    dm.setup("fit")
    sampler = ModalityBatchSampler(dm.train_pairs, batch_size=4)
    assert {sampler.group_of(p) for p in dm.train_pairs} == {"image", "video", "text"}


def test_video_rows_parse_and_refuse_two_visuals():
    row = {"qry": "<|video_1|> what moves?", "qry_image_path": "", "qry_video_path": "v/0001", "pos_text": "a dog",
           "pos_image_path": ""}
    pair = parse_train_row(row, "S", 3)
    assert pair.query.video == "v/0001" and pair.query.image is None and pair.query.key != \
        parse_train_row({**row, "qry_video_path": ""}, "S", 3).query.key
    with pytest.raises(DataError, match=r"dataset 'S', row 3, field 'qry_image_path/qry_video_path'.*one of them"):
        parse_train_row({**row, "qry_image_path": "a.png"}, "S", 3)


def test_missing_training_video_is_named(root, tmp_path):
    import shutil

    media = tmp_path / "media"
    shutil.copytree(root / "media" / "train", media / "train")
    (media / "train/videos/caption/0002.mp4").unlink()
    dm = _datamodule(root, num_frames=4)
    dm.image_loader = type(dm.image_loader)(media, 4)
    dm.setup("fit")
    dm.set_input_builder(Embedder.build("qwen3_vl", config={}).input_builder)
    pairs = [p for p in dm.train_pairs if p.subset == "ShapeVideoCaption"]
    with pytest.raises(DataError, match=r"dataset 'ShapeVideoCaption', row 2, field 'pos_video_path'.*0002.mp4 not found"):
        dm._collator()(pairs)


def test_a_suite_with_the_mix_serves_evaluation(root):
    """evaluate.py asks for no training mix (0): a root that has one is reused, not rebuilt (and vice versa not)."""
    assert _is_complete(root, _manifest(0, 2, 0)) and _is_complete(root, _manifest(0, 2, 4))
    assert not _is_complete(root, _manifest(0, 2, 8)) and not _is_complete(root, _manifest(0, 3, 0))


@pytest.mark.slow
def test_train_command_on_the_mix(tmp_path):
    """`python train.py data=bundled_v2 eval_data=mmeb_v2_bundled` trains on the mix and scores the V2 suite."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "train.py", "data=bundled_v2", "eval_data=mmeb_v2_bundled", "model=tiny_qwen3vl",
         "sampler=homogeneous", "trainer.max_steps=3", "trainer.val_check_interval=3", "data.batch_size=8",
         "data.val_batch_size=8", "data.val_per_subset=4", "data.bundled.train_rows_per_subset=16",
         "eval_data.bundled_v2.queries_per_dataset=4", "evaluate_before=false", "trainer.enable_progress_bar=false",
         f"paths.data_dir={tmp_path / 'data'}", f"paths.output_dir={tmp_path / 'run'}"],
        cwd=root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert sorted(results["metrics"]) == ["image", "video", "visdoc"] and len(results["datasets"]) == 8
