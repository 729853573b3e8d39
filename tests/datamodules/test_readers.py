"""The MMEB readers on fixtures in the exact hub schemas, and the errors bad input gets."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datamodules import DataError, MMEBDataModule
from datamodules.images import ImageLoader
from datamodules.mmeb import MMEB_EVAL_DATASETS, MMEB_TRAIN_SUBSETS, read_eval_rows, read_train_pairs


def write_repo(root, configs: dict[str, dict[str, pa.Table]]):
    """A local snapshot laid out like the hub repos: <config>/<split>-00000-of-00001.parquet + README configs."""
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        lines += [f"- config_name: {name}", "  data_files:"]
        for split, table in splits.items():
            pq.write_table(table, root / name / f"{split}-00000-of-00001.parquet")
            lines += [f"  - split: {split}", f"    path: {name}/{split}-*.parquet"]
    (root / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


def train_table(**overrides):
    cols = {
        "qry": ["<|image_1|>\nRepresent the given image for classification", "Find me an everyday image: a dog"],
        "qry_image_path": ["images/A/0.png", ""],
        "pos_text": ["dog", "<|image_1|>\nRepresent the given image."],
        "pos_image_path": ["", "images/A/1.png"],
        "neg_text": ["cat", ""],
        "neg_image_path": ["", ""],
    }
    cols.update(overrides)
    return pa.table(cols)


def eval_table(**overrides):
    cols = {
        "qry_text": ["<|image_1|>\nRepresent the given image for classification"],
        "qry_img_path": ["images/A/0.png"],
        "tgt_text": [["dog", "cat", "bird"]],
        "tgt_img_path": [["", "", ""]],
    }
    cols.update(overrides)
    return pa.table(cols)


@pytest.fixture
def images(tmp_path):
    (tmp_path / "images" / "A").mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (20, 20), "red").save(tmp_path / "images" / "A" / f"{i}.png")
    return tmp_path


def test_train_reader(tmp_path):
    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table(), "diverse_instruction": train_table()}})
    pairs = read_train_pairs(str(repo), "A", "original")
    assert len(pairs) == 2
    p0, p1 = pairs
    assert p0.query.image == "images/A/0.png" and p0.positive.image is None and p0.positive.text == "dog"
    assert [n.text for n in p0.negatives] == ["cat"] and p1.negatives == ()
    assert p1.query.image is None and p1.positive.image == "images/A/1.png"
    assert read_train_pairs(str(repo), "A", "original", use_negatives=False)[0].negatives == ()
    assert len(read_train_pairs(str(repo), "A", "diverse_instruction", max_rows=1)) == 1


def test_eval_reader(tmp_path):
    repo = write_repo(tmp_path / "repo", {"A": {"test": eval_table()}})
    (row,) = read_eval_rows(str(repo), "A")
    assert row.query.image == "images/A/0.png"
    assert [c.text for c in row.candidates] == ["dog", "cat", "bird"] and all(c.image is None for c in row.candidates)


def test_unknown_subset_lists_available(tmp_path):
    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table()}, "B": {"original": train_table()}})
    with pytest.raises(DataError, match=r"unknown subset 'C'.*\['A', 'B'\]"):
        read_train_pairs(str(repo), "C")


def test_wrong_columns(tmp_path):
    repo = write_repo(tmp_path / "repo", {"A": {"original": pa.table({"query": ["x"], "pos_text": ["y"]})}})
    with pytest.raises(DataError, match=r"dataset 'A'.*missing column\(s\) \['qry', 'qry_image_path'"):
        read_train_pairs(str(repo), "A")


def test_parallel_lists_of_different_length(tmp_path):
    repo = write_repo(tmp_path / "repo", {"A": {"test": eval_table(tgt_img_path=[["", ""]])}})
    with pytest.raises(DataError, match=r"dataset 'A', row 0, field 'tgt_text/tgt_img_path'.*3 candidates.*2"):
        read_eval_rows(str(repo), "A")


def test_empty_row(tmp_path):
    table = train_table(qry=["   ", "x"], qry_image_path=["", ""])
    repo = write_repo(tmp_path / "repo", {"A": {"original": table}})
    with pytest.raises(DataError, match=r"row 0, field 'qry/qry_image_path': empty item"):
        read_train_pairs(str(repo), "A")


def test_placeholder_without_image(tmp_path):
    table = train_table(qry_image_path=["", ""])
    repo = write_repo(tmp_path / "repo", {"A": {"original": table}})
    with pytest.raises(DataError, match=r"row 0, field 'qry'.*placeholder"):
        read_train_pairs(str(repo), "A")


def test_wrong_type_in_row(tmp_path):
    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table(pos_text=[3, 4])}})
    with pytest.raises(DataError, match=r"row 0, field 'pos_text': expected a string"):
        read_train_pairs(str(repo), "A")


def test_missing_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(DataError, match="not an existing directory"):
        read_train_pairs(str(tmp_path / "nowhere" / "train"), "A")


def test_missing_and_corrupt_images(images):
    loader = ImageLoader(images)
    assert loader.load("images/A/0.png").size == (20, 20)
    with pytest.raises(DataError, match=r"dataset 'A', row 7, field 'qry_image_path': image file .*nope.png not found"):
        loader.load("images/A/nope.png", "A", 7, "qry_image_path")
    (images / "images" / "A" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"row 3, field 'pos_image_path': image file .*bad.png cannot be read"):
        loader.load("images/A/bad.png", "A", 3, "pos_image_path")


def test_datamodule_missing_images_error_or_counted_skip(images):
    table = train_table(qry_image_path=["images/A/missing.png", ""])
    repo = write_repo(images / "repo", {"A": {"original": table}})
    dm = MMEBDataModule(str(repo), ["A"], image_root=str(images))
    with pytest.raises(DataError, match=r"dataset 'A', row 0, field 'qry_image_path'.*1 image file\(s\) missing"):
        dm.setup("fit")
    dm = MMEBDataModule(str(repo), ["A"], image_root=str(images), on_missing_image="skip")
    dm.setup("fit")
    assert len(dm.train_pairs) == 1 and dm.skipped == {"A": 1}


def test_benchmark_lists():
    assert len(MMEB_TRAIN_SUBSETS) == 20 and len(MMEB_EVAL_DATASETS) == 36
    splits = [s for _, s in MMEB_EVAL_DATASETS.values()]
    assert splits.count("IND") == 20 and splits.count("OOD") == 16
    metas = [m for m, _ in MMEB_EVAL_DATASETS.values()]
    assert [metas.count(m) for m in ("Classification", "VQA", "Retrieval", "Grounding")] == [10, 10, 12, 4]


def test_same_named_snapshots_do_not_share_a_stale_cache(tmp_path):
    """`datasets` alone keys local caches on the folder name: two 'repo' folders would collide."""
    a = write_repo(tmp_path / "a" / "repo", {"A": {"original": train_table()}})
    b = write_repo(tmp_path / "b" / "repo", {"A": {"original": train_table(qry=["x", "y"], qry_image_path=["", ""])}})
    assert read_train_pairs(str(a), "A")[1].query.text.startswith("Find me")
    assert [p.query.text for p in read_train_pairs(str(b), "A")] == ["x", "y"]
    write_repo(a, {"A": {"original": train_table(qry=["z", "w"], qry_image_path=["", ""])}})  # regenerated in place
    assert [p.query.text for p in read_train_pairs(str(a), "A")] == ["z", "w"]
