"""Tests of the bundled offline shapes dataset: hub schemas, content invariants, determinism,
caching/regeneration, concurrency and vocabulary coverage."""

from __future__ import annotations

import json
import re
import threading
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datamodules.builders import bundled
from datamodules.builders.bundled import (
    EVAL_DATASETS,
    IMAGE_TOKEN,
    TRAIN_SUBSETS,
    bundled_vocabulary,
    ensure_bundled,
)

TRAIN_N, EVAL_N = 40, 20
TRAIN_COLUMNS = ["qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path"]
EVAL_COLUMNS = ["qry_text", "qry_img_path", "tgt_text", "tgt_img_path"]
EXPECTED_CANDIDATES = {
    "ShapeCls": 30, "ColorCls": 6, "ShapeVQA": 10, "CountVQA": 10, "ShapeT2I": 16, "ShapeI2T": 16,
    "CaptionParaphrase": 16, "ShapeGrounding": 8, "PositionGrounding": 8,
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return ensure_bundled(tmp_path_factory.mktemp("bundled") / "data", train_per_subset=TRAIN_N,
                          eval_per_dataset=EVAL_N, seed=0)


def _train_rows(root: Path, subset: str, split: str = "original") -> list[dict]:
    return pq.read_table(root / "train" / subset / f"{split}-00000-of-00001.parquet").to_pylist()


def _eval_rows(root: Path, name: str) -> list[dict]:
    return pq.read_table(root / "eval" / name / "test-00000-of-00001.parquet").to_pylist()


@cache
def _image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def _colors_in(path: Path, min_pixels: int = 20) -> set[str]:
    """Palette colours drawn in an image (shapes are drawn without anti-aliasing, so exact RGB)."""
    pixels = np.asarray(_image(path)).reshape(-1, 3)
    return {name for name, rgb in bundled.COLORS.items() if (pixels == rgb).all(axis=1).sum() >= min_pixels}


def _dominant_color(path: Path) -> str:
    pixels = np.asarray(_image(path)).reshape(-1, 3)
    counts = {name: int((pixels == rgb).all(axis=1).sum()) for name, rgb in bundled.COLORS.items()}
    return max(counts, key=counts.get)


def _check_text_image(text: str, image_path: str, image_root: Path) -> None:
    assert isinstance(text, str) and text.strip(), "texts are never empty"
    assert (IMAGE_TOKEN in text) == bool(image_path), f"placeholder iff image: {text!r} / {image_path!r}"
    if image_path:
        assert not Path(image_path).is_absolute() and image_path.startswith("images/")
        full = image_root / image_path
        assert full.is_file(), f"missing image {full}"
        image = _image(full)
        assert image.size == (84, 84) and image.mode == "RGB"


# ---------------------------------------------------------------- schemas through `datasets`


def test_load_dataset_train_and_eval_schemas(root, tmp_path):
    datasets = pytest.importorskip("datasets")
    cache = str(tmp_path / "hf_cache")
    for subset in TRAIN_SUBSETS:
        for split in ("original", "diverse_instruction"):
            ds = datasets.load_dataset(str(root / "train"), subset, split=split, cache_dir=cache)
            assert ds.column_names == TRAIN_COLUMNS
            assert len(ds) == TRAIN_N
            for column in TRAIN_COLUMNS:
                assert ds.features[column] == datasets.Value("string")
    for name in EVAL_DATASETS:
        ds = datasets.load_dataset(str(root / "eval"), name, split="test", cache_dir=cache)
        assert ds.column_names == EVAL_COLUMNS
        assert len(ds) == EVAL_N
        assert ds.features["qry_text"] == datasets.Value("string")
        assert ds.features["qry_img_path"] == datasets.Value("string")
        for column in ("tgt_text", "tgt_img_path"):
            feature = ds.features[column]
            inner = getattr(feature, "feature", None)
            assert inner == datasets.Value("string"), f"{name}.{column} should be a list of strings, got {feature}"


def test_manifest_and_api_constants(root):
    manifest = json.loads((root / "bundled.json").read_text())
    assert manifest["version"] == bundled.BUNDLED_VERSION
    assert (manifest["seed"], manifest["train_per_subset"], manifest["eval_per_dataset"]) == (0, TRAIN_N, EVAL_N)
    assert manifest["train_rows"] == {s: TRAIN_N for s in TRAIN_SUBSETS}
    assert manifest["eval_rows"] == {d: EVAL_N for d in EVAL_DATASETS}
    assert len(TRAIN_SUBSETS) == 5 and set(TRAIN_SUBSETS) <= set(EVAL_DATASETS)
    for meta_task, kind in EVAL_DATASETS.values():
        assert meta_task in {"Classification", "VQA", "Retrieval", "Grounding"} and kind in {"IND", "OOD"}
    assert {d for d, (_, kind) in EVAL_DATASETS.items() if kind == "IND"} == set(TRAIN_SUBSETS)


# ---------------------------------------------------------------- content invariants


def test_train_rows_texts_and_images(root):
    for subset in TRAIN_SUBSETS:
        original, diverse = _train_rows(root, subset), _train_rows(root, subset, "diverse_instruction")
        assert len(original) == len(diverse) == TRAIN_N
        for row, drow in zip(original, diverse):
            for prefix_text, prefix_image in (("qry", "qry_image_path"), ("pos_text", "pos_image_path"),
                                              ("neg_text", "neg_image_path")):
                _check_text_image(row[prefix_text], row[prefix_image], root / "train")
                _check_text_image(drow[prefix_text], drow[prefix_image], root / "train")
            # The diverse split shares images and answers, and only rewords instructions.
            for column in ("qry_image_path", "pos_image_path", "neg_image_path"):
                assert row[column] == drow[column]
            if IMAGE_TOKEN not in row["pos_text"]:
                assert (row["pos_text"], row["neg_text"]) == (drow["pos_text"], drow["neg_text"])
        assert any(r["qry"] != d["qry"] for r, d in zip(original, diverse)), f"{subset}: diverse == original"


def test_eval_rows_candidates(root):
    for name in EVAL_DATASETS:
        rows = _eval_rows(root, name)
        assert len(rows) == EVAL_N
        for row in rows:
            _check_text_image(row["qry_text"], row["qry_img_path"], root / "eval")
            texts, paths = row["tgt_text"], row["tgt_img_path"]
            assert len(texts) == len(paths) == EXPECTED_CANDIDATES[name], name
            for text, path in zip(texts, paths):
                _check_text_image(text, path, root / "eval")
            assert len(set(zip(texts, paths))) == len(texts), f"{name}: duplicate candidates in {row}"
            image_paths = [p for p in paths if p]
            if image_paths:  # distinct files AND distinct pixels: no visually identical distractor
                contents = [(root / "eval" / p).read_bytes() for p in image_paths]
                assert len(set(contents)) == len(contents), f"{name}: identical candidate images"


def test_caption_paraphrase_is_text_only(root):
    for row in _eval_rows(root, "CaptionParaphrase"):
        assert row["qry_img_path"] == "" and all(p == "" for p in row["tgt_img_path"])
        assert IMAGE_TOKEN not in row["qry_text"] and not any(IMAGE_TOKEN in t for t in row["tgt_text"])
        caption = row["qry_text"].split(": ", 1)[1]
        assert caption not in row["tgt_text"], "candidates are paraphrases, not the query caption itself"


def test_ground_truth_is_index_zero(root):
    """Check index 0 against the pixels, independently of the generator's bookkeeping."""
    for name in ("ShapeCls", "ColorCls"):
        for row in _eval_rows(root, name):
            gt_color = row["tgt_text"][0].split()[0]
            assert _colors_in(root / "eval" / row["qry_img_path"]) == {gt_color}
    for row in _eval_rows(root, "ShapeGrounding"):
        label = re.search(r'"(\w+) (\w+)"', row["qry_text"]).group(1)
        assert _dominant_color(root / "eval" / row["tgt_img_path"][0]) == label
        assert Path(row["tgt_img_path"][0]).name.startswith(Path(row["qry_img_path"]).stem + "_crop")
    for row in _eval_rows(root, "ShapeT2I"):
        caption = row["qry_text"].split(": ", 1)[1]
        caption_colors = {w for w in re.findall(r"\w+", caption) if w in bundled.COLORS}
        assert _colors_in(root / "eval" / row["tgt_img_path"][0]) == caption_colors
    for row in _eval_rows(root, "ShapeVQA"):
        question = row["qry_text"].rsplit(": ", 1)[1]
        answer = row["tgt_text"][0]
        if question.startswith("What color"):
            assert answer in _colors_in(root / "eval" / row["qry_img_path"])
        elif question.startswith("Where"):
            assert answer in bundled.POSITIONS
        elif question.startswith("What shape"):
            assert answer in bundled.SHAPES
    for row in _eval_rows(root, "CountVQA"):
        assert row["tgt_text"][0] in bundled.COUNT_WORDS
        assert set(bundled.COUNT_WORDS) <= set(row["tgt_text"])


def test_hard_negatives_are_real_perturbations(root):
    for row in _train_rows(root, "ShapeT2I"):
        assert row["neg_image_path"] != row["pos_image_path"]
        pos, neg = (np.asarray(_image(root / "train" / row[c])) for c in ("pos_image_path", "neg_image_path"))
        assert not np.array_equal(pos, neg)
    for subset in ("ShapeCls", "ShapeVQA", "ShapeI2T"):
        for row in _train_rows(root, subset):
            assert row["neg_text"] != row["pos_text"], subset
    for row in _train_rows(root, "ShapeI2T"):
        # A compositional perturbation keeps most of the caption's words.
        shared = set(row["pos_text"].split()) & set(row["neg_text"].split())
        assert len(shared) >= 2
    for row in _train_rows(root, "ShapeGrounding"):
        stem = Path(row["qry_image_path"]).stem
        assert row["neg_image_path"] != row["pos_image_path"]
        assert Path(row["neg_image_path"]).name.startswith(stem), "neg crop comes from the same image"
        label_color = re.search(r'"(\w+) (\w+)"', row["qry"]).group(1)
        assert _dominant_color(root / "train" / row["pos_image_path"]) == label_color
    for row in _train_rows(root, "ShapeVQA"):
        assert "How many" not in row["qry"], "counting is held out of training"


def test_vocabulary_covers_every_generated_text(root):
    vocab = set(bundled_vocabulary())
    assert IMAGE_TOKEN not in vocab and "image_1" not in vocab and "|" not in vocab
    assert all(token == token.lower() for token in vocab)
    seen: set[str] = set()
    for subset in TRAIN_SUBSETS:
        for split in ("original", "diverse_instruction"):
            for row in _train_rows(root, subset, split):
                for column in ("qry", "pos_text", "neg_text"):
                    seen.update(bundled.tokenize(row[column]))
    for name in EVAL_DATASETS:
        for row in _eval_rows(root, name):
            for text in [row["qry_text"], *row["tgt_text"]]:
                seen.update(bundled.tokenize(text))
    assert seen - vocab == set()
    assert bundled.tokenize(f"{IMAGE_TOKEN}\nWhat color is the circle?") == ["what", "color", "is", "the",
                                                                             "circle", "?"]


# ---------------------------------------------------------------- determinism, caching, concurrency


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_is_byte_identical_and_other_seed_differs(root, tmp_path):
    again = ensure_bundled(tmp_path / "again", train_per_subset=TRAIN_N, eval_per_dataset=EVAL_N, seed=0)
    first, second = _all_files(root), _all_files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first), "same seed must give identical bytes everywhere"
    for name in EVAL_DATASETS:
        path = Path("eval") / name / "test-00000-of-00001.parquet"
        assert pq.read_table(root / path).equals(pq.read_table(again / path))

    other = ensure_bundled(tmp_path / "other", train_per_subset=TRAIN_N, eval_per_dataset=EVAL_N, seed=1)
    for subset in TRAIN_SUBSETS:
        assert _train_rows(root, subset) != _train_rows(other, subset)
    assert (root / "train/images/ShapeT2I/000000.png").read_bytes() != (
        other / "train/images/ShapeT2I/000000.png").read_bytes()


def test_parallel_build_equals_serial(tmp_path):
    serial = ensure_bundled(tmp_path / "serial", train_per_subset=12, eval_per_dataset=6, workers=1)
    parallel = ensure_bundled(tmp_path / "parallel", train_per_subset=12, eval_per_dataset=6, workers=2)
    assert _all_files(serial) == _all_files(parallel)


def test_eval_differs_from_train(root):
    train_captions = {r["qry"].split(": ", 1)[1] for r in _train_rows(root, "ShapeT2I")}
    eval_captions = [r["qry_text"].split(": ", 1)[1] for r in _eval_rows(root, "ShapeT2I")]
    assert sum(c in train_captions for c in eval_captions) < len(eval_captions)


def test_second_call_is_a_noop_and_other_sizes_regenerate(tmp_path):
    target = tmp_path / "cached"
    ensure_bundled(target, train_per_subset=8, eval_per_dataset=4)
    manifest = target / "bundled.json"
    mtime, image = manifest.stat().st_mtime_ns, target / "train/images/ShapeCls/000000.png"
    image_inode = image.stat().st_ino
    assert ensure_bundled(target, train_per_subset=8, eval_per_dataset=4) == target.absolute()
    assert manifest.stat().st_mtime_ns == mtime and image.stat().st_ino == image_inode

    ensure_bundled(target, train_per_subset=8, eval_per_dataset=5)
    assert json.loads(manifest.read_text())["eval_per_dataset"] == 5
    assert len(_eval_rows(target, "ShapeT2I")) == 5
    assert not list(tmp_path.glob(".cached.*")), "no temporary build directories are left behind"

    ensure_bundled(target, train_per_subset=8, eval_per_dataset=5, force=True)
    assert json.loads(manifest.read_text())["eval_per_dataset"] == 5


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    calls = []
    real_generate = bundled._generate

    def counting_generate(*args, **kwargs):
        calls.append(1)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(bundled, "_generate", counting_generate)
    target, results, errors = tmp_path / "shared", [], []

    def worker():
        try:
            results.append(ensure_bundled(target, train_per_subset=8, eval_per_dataset=4))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 3
    assert len(calls) == 1, "the flock must make later callers reuse the first build"
    assert (target / "bundled.json").is_file()


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    foreign = tmp_path / "precious"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bundled dataset"):
        ensure_bundled(foreign, train_per_subset=4, eval_per_dataset=2)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_cli_print_vocab_and_build(tmp_path, capsys):
    assert bundled.main(["--print-vocab"]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == bundled_vocabulary()
    target = tmp_path / "cli"
    assert bundled.main(["--root", str(target), "--train-per-subset", "4", "--eval-per-dataset", "2"]) == 0
    out = capsys.readouterr().out
    assert "ShapeGrounding" in out and "CaptionParaphrase" in out
    assert (target / "bundled.json").is_file()
