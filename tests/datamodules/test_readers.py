"""The MMEB readers on snapshots in the exact hub schemas and layouts (tests/datamodules/conftest.py), the rows they
skip (counted by reason) and the errors bad input gets, naming dataset, split, file, row and field."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datamodules import DataError, MMEBDataModule
from datamodules.images import ImageLoader
from datamodules.mmeb import (
    MMEB_EVAL_DATASETS,
    MMEB_TRAIN_SUBSETS,
    compose_instruction_row,
    read_eval_dataset,
    read_eval_rows,
    read_train_pairs,
    read_train_subset,
)


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


def test_train_reader_both_splits(tmp_path, write_repo):
    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table(), "diverse_instruction": train_table(
        qry=["<|image_1|>\nClassify this picture", "Retrieve an everyday photo of a dog"])}})
    pairs = read_train_pairs(str(repo), "A", "original")
    assert len(pairs) == 2
    p0, p1 = pairs
    assert p0.query.image == "images/A/0.png" and p0.positive.image is None and p0.positive.text == "dog"
    assert [n.text for n in p0.negatives] == ["cat"] and p1.negatives == ()
    assert p1.query.image is None and p1.positive.image == "images/A/1.png"
    assert read_train_pairs(str(repo), "A", "original", use_negatives=False)[0].negatives == ()
    diverse = read_train_pairs(str(repo), "A", "diverse_instruction", max_rows=1)
    assert [p.query.text for p in diverse] == ["<|image_1|>\nClassify this picture"]


def test_eval_reader(tmp_path, write_repo):
    repo = write_repo(tmp_path / "repo", {"A": {"test": eval_table()}})
    (row,) = read_eval_rows(str(repo), "A")
    assert row.query.image == "images/A/0.png"
    assert [c.text for c in row.candidates] == ["dog", "cat", "bird"] and all(c.image is None for c in row.candidates)
    assert read_eval_dataset(str(repo), "A").skipped == {}


def test_unknown_subset_lists_available(tmp_path, write_repo):
    """A dataset the snapshot has no folder for (and does not list) is named with the folder looked for and the
    datasets that are there, with or without the README's `configs:` (issue 22: `datasets` named only the root)."""
    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table()}, "B": {"original": train_table()}})
    message = rf"dataset 'C': dataset folder {repo / 'C'} does not exist; {repo} holds 2 dataset folder\(s\): A, B\."
    with pytest.raises(DataError, match=message):
        read_train_pairs(str(repo), "C")
    (repo / "README.md").unlink()  # a snapshot without the hub's README
    with pytest.raises(DataError, match=message):
        read_train_pairs(str(repo), "C")


def test_wrong_columns(tmp_path, write_repo):
    repo = write_repo(tmp_path / "repo", {"A": {"original": pa.table({"query": ["x"], "pos_text": ["y"]})}})
    with pytest.raises(DataError, match=r"dataset 'A'.*missing column\(s\) \['qry', 'qry_image_path'"):
        read_train_pairs(str(repo), "A")


def test_parallel_lists_of_different_length(tmp_path, write_repo):
    repo = write_repo(tmp_path / "repo", {"A": {"test": eval_table(tgt_img_path=[["", ""]])}})
    with pytest.raises(DataError, match=r"dataset 'A', row 0, field 'tgt_text/tgt_img_path'.*3 candidates.*2"):
        read_eval_rows(str(repo), "A")


def test_empty_items_are_skipped_and_counted(tmp_path, write_repo, images):
    """The reference skips a training row whose query or positive is empty (VLM2Vec v1 src/dataset.py:89)."""
    table = train_table(qry=["   ", "x", "y"], qry_image_path=["", "", ""], pos_text=["a", "", "b"],
                        pos_image_path=["", "", ""], neg_text=["", "", ""], neg_image_path=["", "", ""])
    repo = write_repo(tmp_path / "repo", {"A": {"original": table}})
    pairs, skipped, notes = read_train_subset(str(repo), "A")
    assert [p.row for p in pairs] == [2] and skipped == {"empty_query": 1, "empty_positive": 1} and notes == {}
    dm = MMEBDataModule(str(repo), ["A"], image_root=str(images))
    dm.setup("fit")
    assert dm.skipped == {"A": {"empty_query": 1, "empty_positive": 1}}
    assert dm.skip_summary() == "A: 2 rows skipped (empty_positive 1, empty_query 1)"
    # eval: an empty query or candidate drops the row, counted (the reference would encode an empty string)
    ev = eval_table(qry_text=["", "q", "q2"], qry_img_path=["", "", ""], tgt_text=[["a"], ["b", " "], ["c", "d"]],
                    tgt_img_path=[[""], ["", ""], ["", ""]])
    rows, skipped, _ = read_eval_dataset(str(write_repo(tmp_path / "eval", {"E": {"test": ev}})), "E")
    assert [r.row for r in rows] == [2] and skipped == {"empty_query": 1, "empty_candidate": 1}
    only_empty = train_table(qry=[""], qry_image_path=[""], pos_text=["a"], pos_image_path=[""], neg_text=[""],
                             neg_image_path=[""])
    with pytest.raises(DataError, match=r"dataset 'A': subset has no usable rows .*skipped: \{'empty_query': 1\}"):
        read_train_pairs(str(write_repo(tmp_path / "r2", {"A": {"original": only_empty}})), "A")


def test_placeholder_without_image_is_kept(tmp_path, write_repo):
    """MMEB-train WebQA queries hold <|image_1|> with an empty qry_image_path: kept, as the reference keeps them."""
    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table(qry_image_path=["", ""])}})
    pairs, skipped, notes = read_train_subset(str(repo), "A")
    assert len(pairs) == 2 and skipped == {} and notes == {"placeholder_without_image": 1}
    assert pairs[0].query.text.startswith("<|image_1|>") and pairs[0].query.image is None
    rows, _, notes = read_eval_dataset(str(write_repo(tmp_path / "eval", {"E": {"test": eval_table(
        qry_img_path=[""])}})), "E")
    assert rows[0].query.placeholder_without_image and notes == {"placeholder_without_image": 1}


def test_nan_cells(tmp_path, write_repo):
    """NaN is how pandas writes a missing value: no negative / no image; in a required text it is a named error."""
    nan = float("nan")
    table = train_table(neg_text=pa.array([nan, nan], pa.float64()), pos_image_path=["", "images/A/1.png"])
    assert [p.negatives for p in read_train_pairs(str(write_repo(tmp_path / "a", {"A": {"original": table}})),
                                                  "A")] == [(), ()]
    table = train_table(qry=["x", "y"], qry_image_path=pa.array([nan, nan], pa.float64()))
    assert [p.query.image for p in read_train_pairs(str(write_repo(tmp_path / "b", {"A": {"original": table}})),
                                                    "A")] == [None, None]
    table = train_table(pos_text=pa.array([1.5, nan], pa.float64()), pos_image_path=["", ""])
    with pytest.raises(DataError, match=r"dataset 'A', row 0, field 'pos_text': expected a string, got float"):
        read_train_pairs(str(write_repo(tmp_path / "c", {"A": {"original": table}})), "A")
    table = train_table(pos_text=pa.array([nan, nan], pa.float64()), pos_image_path=["", ""])
    with pytest.raises(DataError, match=r"dataset 'A', row 0, field 'pos_text': NaN \(a missing value"):
        read_train_pairs(str(write_repo(tmp_path / "d", {"A": {"original": table}})), "A")


def test_a_null_in_a_required_text_is_refused_naming_file_row_and_field(tmp_path, write_repo):
    """A parquet null in a required text (`qry`, `pos_text`, `qry_text`, `tgt_text`) is refused like a NaN, naming
    the file, the row and the field, whether or not the row has an image (issue 22: an image row's null `qry` trained
    as an empty text). Decision: an error, not the reference's skip. VLM2Vec skips rows whose items are *empty*
    ("" and no image, METHODS §1.4), and so does embedlab, counted; a null is not an empty text but a value the file
    lost (MMEB's files write "" for "no text"), on a row that still has an image the reference would not skip but
    hand to its processor as None. Skipping it would hide a damaged file, training it as "" would be silent; the
    fix (write "" or drop the row) is the user's. Image paths and negatives keep null = none."""
    table = train_table(qry=pa.array([None, "Find me an everyday image: a dog"], pa.string()))  # row 0 has an image
    repo = write_repo(tmp_path / "a", {"A": {"original": table}})
    data_file = repo / "A" / "original-00000-of-00001.parquet"
    with pytest.raises(DataError) as err:
        read_train_pairs(str(repo), "A")
    assert str(err.value) == (f"dataset 'A', row 0, field 'qry': null (a missing value) where a text is required; "
                              f"write '' for 'no text' or drop the row (in {data_file}, row 0)")
    # The same in a text-only row, in the positive, and in an eval candidate list.
    table = train_table(pos_text=pa.array(["dog", None], pa.string()), pos_image_path=["", ""])
    with pytest.raises(DataError, match=r"dataset 'A', row 1, field 'pos_text': null \(a missing value\).* \(in "
                                        r".*original-00000-of-00001\.parquet, row 1\)"):
        read_train_pairs(str(write_repo(tmp_path / "b", {"A": {"original": table}})), "A")
    ev = eval_table(tgt_text=pa.array([["dog", None, "bird"]], pa.list_(pa.string())))
    with pytest.raises(DataError, match=r"dataset 'E', row 0, field 'tgt_text': null \(a missing value\).*"
                                        r"E/test-00000-of-00001\.parquet, row 0\)"):
        read_eval_rows(str(write_repo(tmp_path / "e", {"E": {"test": ev}})), "E")
    # A null image path or negative is "none", as before.
    table = train_table(qry_image_path=pa.array([None, None], pa.string()), neg_text=pa.array([None, None], pa.string()))
    pairs = read_train_pairs(str(write_repo(tmp_path / "c", {"A": {"original": table}})), "A")
    assert [(p.query.image, p.negatives) for p in pairs] == [(None, ()), (None, ())]


def test_a_bad_row_of_a_split_in_several_files_names_its_file_and_row_there(tmp_path):
    from datamodules.mmeb import row_location

    folder = tmp_path / "A"
    folder.mkdir()
    for k in range(2):
        pq.write_table(train_table(), folder / f"original-0000{k}-of-00002.parquet")
    assert row_location(str(tmp_path), "A", "original", 3) == f"{folder / 'original-00001-of-00002.parquet'}, row 1"
    assert row_location("TIGER-Lab/MMEB-train", "A", "original", 3) == "TIGER-Lab/MMEB-train, config 'A', split 'original'"


def test_literal_model_token_in_text_is_named(tmp_path, write_repo):
    table = train_table(pos_text=["a <|image_pad|> b", "<image> c"])
    with pytest.raises(DataError, match=r"dataset 'A', row 0, field 'pos_text': text contains the model token\(s\) "
                                        r"\['<\|image_pad\|>'\]"):
        read_train_pairs(str(write_repo(tmp_path / "a", {"A": {"original": table}})), "A")
    ev = eval_table(tgt_text=[["dog", "a <image>", "bird"]])
    with pytest.raises(DataError, match=r"dataset 'E', row 0, field 'tgt_text'.*\['<image>'\]"):
        read_eval_rows(str(write_repo(tmp_path / "e", {"E": {"test": ev}})), "E")


def test_wrong_type_in_row(tmp_path, write_repo):
    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table(pos_text=[3, 4])}})
    with pytest.raises(DataError, match=r"row 0, field 'pos_text': expected a string"):
        read_train_pairs(str(repo), "A")


def test_missing_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(DataError, match="not an existing directory"):
        read_train_pairs(str(tmp_path / "nowhere" / "train"), "A")


def test_damaged_snapshots_are_named(tmp_path, write_repo):
    """What `datasets`/pyarrow report badly (or not at all) is named: dataset, split, file and what to do."""
    ok = train_table()
    repo = write_repo(tmp_path / "zero", {"A": {"original": ok, "diverse_instruction": b""}})
    with pytest.raises(DataError, match=r"dataset 'A', field 'split diverse_instruction': file .*zero/A/"
                                        r"diverse_instruction-00000-of-00001.parquet is empty \(0 bytes\).*re-download"):
        read_train_pairs(str(repo), "A", "original")  # `datasets` builds every split of a config
    repo = write_repo(tmp_path / "junk", {"A": {"original": b"PAR1 not really"}})
    with pytest.raises(DataError, match=r"file .*junk/A/original-00000-of-00001.parquet is not a readable parquet"):
        read_train_pairs(str(repo), "A")
    # a column missing in one split only: `datasets` would fill it with nulls (images silently gone)
    repo = write_repo(tmp_path / "cols", {"A": {"original": ok, "diverse_instruction": ok.drop_columns(
        ["pos_image_path"])}})
    with pytest.raises(DataError, match=r"do not have the same columns: .*cols/A/diverse_instruction-00000-of-00001"
                                        r"\.parquet lacks \['pos_image_path'\]"):
        read_train_pairs(str(repo), "A", "original")
    repo = write_repo(tmp_path / "folder", {"A": {"original": ok}, "B": {"original": None}})
    with pytest.raises(DataError, match=r"dataset 'B', field 'split original': config folder .*folder/B is missing"):
        read_train_pairs(str(repo), "B")
    (repo / "B").mkdir()
    with pytest.raises(DataError, match=r"config folder .*folder/B holds no data files"):
        read_train_pairs(str(repo), "B")
    with pytest.raises(DataError, match=r"no data file for split 'diverse_instruction'.*found splits \['original'\]"):
        read_train_pairs(str(repo), "A", "diverse_instruction")
    repo = write_repo(tmp_path / "rows", {"E": {"test": eval_table().slice(0, 0)}})
    with pytest.raises(DataError, match=r"dataset 'E', field 'split test': file .*rows/E/test-00000-of-00001.parquet "
                                        r"has 0 rows"):
        read_eval_rows(str(repo), "E")


def test_errors_inside_datasets_are_named(tmp_path, write_repo, monkeypatch):
    import datasets
    import pyarrow

    repo = write_repo(tmp_path / "repo", {"A": {"original": train_table()}})

    def broken(*args, **kwargs):
        try:
            raise pyarrow.lib.ArrowInvalid("Parquet magic bytes not found in footer")
        except pyarrow.lib.ArrowInvalid as e:
            raise datasets.exceptions.DatasetGenerationError("An error occurred while generating the dataset") from e

    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(DataError, match=r"dataset 'A', field 'split original': `datasets` could not read files "
                                        r"\[.*repo/A/original-00000-of-00001.parquet'\]: DatasetGenerationError: .* <- "
                                        r"ArrowInvalid: Parquet magic bytes"):
        read_train_pairs(str(repo), "A")


def test_missing_and_corrupt_images(images):
    loader = ImageLoader(images)
    assert loader.load("images/A/0.png").size == (20, 20)
    with pytest.raises(DataError, match=r"dataset 'A', row 7, field 'qry_image_path': image file .*nope.png not found"):
        loader.load("images/A/nope.png", "A", 7, "qry_image_path")
    (images / "images" / "A" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"row 3, field 'pos_image_path': image file .*bad.png cannot be read"):
        loader.load("images/A/bad.png", "A", 3, "pos_image_path")


def test_datamodule_missing_images_error_or_counted_skip(images, write_repo):
    table = train_table(qry_image_path=["images/A/missing.png", ""])
    repo = write_repo(images / "repo", {"A": {"original": table}})
    dm = MMEBDataModule(str(repo), ["A"], image_root=str(images))
    with pytest.raises(DataError, match=r"dataset 'A', row 0, field 'qry_image_path'.*1 image file\(s\) missing"):
        dm.setup("fit")
    dm = MMEBDataModule(str(repo), ["A"], image_root=str(images), on_missing_image="skip")
    dm.setup("fit")
    assert len(dm.train_pairs) == 1 and dm.skipped == {"A": {"missing_image": 1}}
    assert dm.skip_summary() == "A: 1 rows skipped (missing_image 1)"


# ------------------------------------------------------------------ the V2 image-task copy (instruction columns)
def _v2(qry_inst, qry_text, tgt_inst, tgt_text, qry_img="q.jpg", tgt_img=None):
    return {"qry_inst": qry_inst, "qry_text": qry_text, "qry_img_path": qry_img, "tgt_inst": tgt_inst,
            "tgt_text": tgt_text, "tgt_img_path": tgt_img or [""] * len(tgt_text)}


def test_instruction_copy_composed_as_vlm2vec_v2():
    """Expected strings worked out from VLM2Vec main: src/data/eval_dataset/image_cls_dataset.py:15-27,
    image_qa_dataset.py:15-27, image_t2i_eval.py:16-38, image_i2i_vg_dataset.py:15-39 and
    src/model/processor.py:650-667 (process_input_text: "<image token> " + instruction [+ " " + text]);
    <|image_1|> stands where V2 puts the model's image token."""
    cls = compose_instruction_row(_v2("<|image_1|>\nRepresent the given image for classification", "",
                                      "Represent the class label:", ["dog", "cat"]), "ImageNet-1K")
    assert cls == {"qry_text": "<|image_1|>\nRepresent the given image for classification\n", "qry_img_path": "q.jpg",
                   "tgt_text": ["dog", "cat"], "tgt_img_path": ["", ""]}   # tgt_inst unused, as in V2
    qa = compose_instruction_row(_v2("<|image_1|> Represent the given image with the following question:",
                                     "What is it?", "", ["a dog", "a cat"]), "OK-VQA")
    assert qa["qry_text"] == "<|image_1|>\nRepresent the given image with the following question: What is it?\n"
    webqa = compose_instruction_row(_v2("<|image_1|>\nFind a Wikipedia image that answers this question:", "Who?",
                                        "<|image_1|>\nRepresent the given Wikipedia image with related text information:",
                                        ["Paris", "Rome"], qry_img="ignored.jpg", tgt_img=["a.jpg", "b.jpg"]), "WebQA")
    assert webqa["qry_text"] == "<|image_1|>\nFind a Wikipedia image that answers this question: Who?\n"
    assert webqa["qry_img_path"] == ""   # a text query: the placeholder without an image, as in V2
    assert webqa["tgt_text"] == ["<|image_1|>\nRepresent the given Wikipedia image with related text information: "
                                 f"{c}\n" for c in ("Paris", "Rome")]
    coco = compose_instruction_row(_v2("Find me an everyday image that matches the given caption:", "A dog.",
                                       "<|image_1|>\nRepresent the given image.", ["", ""], qry_img="",
                                       tgt_img=["a.jpg", "b.jpg"]), "MSCOCO_t2i")
    assert coco["qry_text"] == "Find me an everyday image that matches the given caption: A dog.\n"
    assert coco["tgt_text"] == ["<|image_1|>\nRepresent the given image.\n"] * 2
    visdial = compose_instruction_row(_v2("Represent the given dialogue about an image:", "Q: a? A: b", "", [""],
                                          qry_img="", tgt_img=["a.jpg"]), "VisDial")
    assert visdial["qry_text"] == "Represent the given dialogue about an image: Q: a? A: b\n\n"
    grd = compose_instruction_row(_v2("<|image_1|>\nSelect the portion of the image that isolates the object:",
                                      "dog", "<|image_1|>\nRepresent the given cropped image of the object",
                                      ["", ""], tgt_img=["a.jpg", "b.jpg"]), "MSCOCO")
    assert grd["qry_text"] == "<|image_1|>\nSelect the portion of the image that isolates the object: dog\n"
    assert grd["tgt_text"] == ["<|image_1|>\nRepresent the given cropped image of the object"] * 2   # no "\n" here
    match = compose_instruction_row(_v2("<|image_1|>\nSelect the portion of the image that follows the language "
                                        "expressions.", "", "<|image_1|>\nSelect the portion of the image that "
                                        "follows the language expressions:", ["man left", "dog"],
                                        tgt_img=["a.jpg", "a.jpg"]), "RefCOCO-Matching")
    assert match["tgt_text"][0] == ("<|image_1|>\nSelect the portion of the image that follows the language "
                                    "expressions: man left\n")
    with pytest.raises(DataError, match="no known V2 parser"):
        compose_instruction_row(_v2("x", "", "", ["a"]), "ShapeCls")


def test_instruction_copy_read_with_its_notes(tmp_path, write_repo):
    table = pa.table({k: [v] for k, v in _v2("<|image_1|>\nFind a Wikipedia image that answers this question:",
                                             "Who?", "<|image_1|>\nRepresent the given Wikipedia image:",
                                             ["Paris", "Rome"], qry_img="q.jpg", tgt_img=["a.jpg", "b.jpg"]).items()})
    repo = write_repo(tmp_path / "v2", {"WebQA": {"test": table}})
    rows, skipped, notes = read_eval_dataset(str(repo), "WebQA")
    assert rows[0].query.image is None and rows[0].query.placeholder_without_image
    assert [c.image for c in rows[0].candidates] == ["a.jpg", "b.jpg"]
    assert notes == {"query_image_not_used": 1, "placeholder_without_image": 1} and skipped == {}
    half = write_repo(tmp_path / "half", {"WebQA": {"test": table.drop_columns(["tgt_inst"])}})
    with pytest.raises(DataError, match=r"column\(s\) \['qry_inst'\] without \['tgt_inst'\]"):
        read_eval_dataset(str(half), "WebQA")


def test_benchmark_lists():
    assert len(MMEB_TRAIN_SUBSETS) == 20 and len(MMEB_EVAL_DATASETS) == 36
    splits = [s for _, s in MMEB_EVAL_DATASETS.values()]
    assert splits.count("IND") == 20 and splits.count("OOD") == 16
    metas = [m for m, _ in MMEB_EVAL_DATASETS.values()]
    assert [metas.count(m) for m in ("Classification", "VQA", "Retrieval", "Grounding")] == [10, 10, 12, 4]


def test_same_named_snapshots_do_not_share_a_stale_cache(tmp_path, write_repo):
    """`datasets` alone keys local caches on the folder name: two 'repo' folders would collide."""
    a = write_repo(tmp_path / "a" / "repo", {"A": {"original": train_table()}})
    b = write_repo(tmp_path / "b" / "repo", {"A": {"original": train_table(qry=["x", "y"], qry_image_path=["", ""])}})
    assert read_train_pairs(str(a), "A")[1].query.text.startswith("Find me")
    assert [p.query.text for p in read_train_pairs(str(b), "A")] == ["x", "y"]
    write_repo(a, {"A": {"original": train_table(qry=["z", "w"], qry_image_path=["", ""])}})  # regenerated in place
    assert [p.query.text for p in read_train_pairs(str(a), "A")] == ["z", "w"]
