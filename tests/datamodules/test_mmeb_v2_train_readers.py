"""The MMEB-V2 training readers read tiny snapshots in the reference's layouts as the reference does.

Each expected text is computed by a transcription of the reference's own code (VLM2Vec main,
`src/data/dataset/{mmeb,vidore,visrag,llavahound_dataset_caption,llavahound_dataset_qa}_dataset.py`, branch v2.2
`mmeb_neg_dataset.py`) with the model tokens replaced by the MMEB placeholders — an independent computation of
rows, fields and skips; the readers are then held to it."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

from datamodules.errors import DataError
from datamodules.mmeb_v2_train import (
    TrainSource,
    read_source,
    sources_from_config,
)

IMAGE_TOKEN, VIDEO_TOKEN = "<|image_1|>", "<|video_1|>"


# ------------------------------------------------------------------------- the reference, transcribed
def ref_vidore_process_query(query, prompt, image_token):  # vidore_dataset.py
    return f"{prompt} {image_token} {query}" if prompt else f"{image_token} {query}"


def ref_visrag_process_query(query, prompt, image_token=""):  # visrag_dataset.py
    return f"{prompt} {query} {image_token}" if prompt else f"{query} {image_token}"


def ref_llava_caption(conversations, data_mode):  # llavahound_dataset_caption.py data_prepare_v5
    if data_mode == "caption_retrieval":
        return conversations[0]["value"].replace("<video>", VIDEO_TOKEN), conversations[1]["value"]
    query = "Find a video that contains the following visual content: " + conversations[1]["value"]
    return query, "Understand the content of the provided video: " + VIDEO_TOKEN


def ref_llava_qa(conversations):  # llavahound_dataset_qa.py process_conversations
    query = conversations[0]["value"].replace("<video>", VIDEO_TOKEN)
    return "Answer a question based on the content of a video. " + query, conversations[1]["value"]


def ref_mmeb_keeps(row) -> bool:  # mmeb_dataset.py data_prepare_v4: "empty inputs"
    return not ((not row["qry"] and not row["qry_image_path"]) or (not row["pos_text"] and not row["pos_image_path"]))


# ------------------------------------------------------------------------- snapshots
def _png(color="red", size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _single_config_repo(root: Path, rows: list[dict], fields: dict) -> Path:
    import pyarrow.parquet as pq
    from datasets import Features
    from datasets import Image as ImageFeature

    schema = Features({k: (ImageFeature() if v == "image" else v) for k, v in fields.items()}).arrow_schema
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "data" / "train-00000-of-00001.parquet")
    (root / "README.md").write_text("---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n"
                                    "    path: data/train-*.parquet\n---\n")
    return root


MMEB_ROWS = [
    {"qry": "<|image_1|> Represent the given image for classification", "qry_image_path": "images/a.jpg",
     "pos_text": "dog", "pos_image_path": "", "neg_text": "cat", "neg_image_path": ""},
    {"qry": "", "qry_image_path": "", "pos_text": "orphan", "pos_image_path": "", "neg_text": "", "neg_image_path": ""},
    {"qry": "<|image_1|> Find a Wikipedia image that answers this question: who?", "qry_image_path": "",
     "pos_text": "<|image_1|> Represent the given Wikipedia image with related text information: x",
     "pos_image_path": "images/b.jpg", "neg_text": "", "neg_image_path": ""},
    {"qry": "find the bird", "qry_image_path": "", "pos_text": "", "pos_image_path": "", "neg_text": "",
     "neg_image_path": ""},
    {"qry": "a caption", "qry_image_path": "", "pos_text": "", "pos_image_path": "images/c.jpg", "neg_text": "",
     "neg_image_path": "images/d.jpg"},
]


def test_mmeb_reads_rows_fields_and_skips_as_the_reference(tmp_path, write_repo):
    repo = write_repo(tmp_path / "MMEB-train", {"Sub": {"original": pa.Table.from_pylist(MMEB_ROWS)}})
    s = TrainSource("mine", "mmeb", str(repo), subset="Sub", split="original", media_root=str(tmp_path / "img"))
    result = read_source(s)
    kept = [(i, r) for i, r in enumerate(MMEB_ROWS) if ref_mmeb_keeps(r)]
    assert [p.row for p in result.rows] == [i for i, _ in kept] == [0, 2, 4]
    assert result.skipped == {"empty_query": 1, "empty_positive": 1}
    for pair, (_, raw) in zip(result.rows, kept):
        assert pair.subset == "mine" and pair.query.text == raw["qry"] and pair.positive.text == raw["pos_text"]
        for item, path in ((pair.query, raw["qry_image_path"]), (pair.positive, raw["pos_image_path"])):
            assert item.image == (str(tmp_path / "img" / path) if path else None)
    assert [n.text for n in result.rows[0].negatives] == ["cat"]
    assert result.rows[2].negatives[0].image == str(tmp_path / "img" / "images/d.jpg")
    assert result.notes == {"placeholder_without_image": 1}  # row 2: WebQA's query, kept as the reference keeps it
    capped = read_source(TrainSource("mine", "mmeb", str(repo), subset="Sub", max_samples=3, negatives=False))
    assert [p.row for p in capped.rows] == [0, 2] and not capped.rows[0].negatives  # the first 3 rows, no negatives


def test_mmeb_neg_keeps_num_hardneg_negatives_reproducibly(tmp_path, write_repo):
    rows = [{"qry": f"q{i}", "qry_image_path": "", "pos_text": f"p{i}", "pos_image_path": "",
             "neg_text": [f"n{i}_{k}" for k in range(5)], "neg_image_path": [""] * 5} for i in range(3)]
    repo = write_repo(tmp_path / "B3", {"Sub": {"train": pa.Table.from_pylist(rows)}})

    def negs(k):
        return [[n.text for n in p.negatives] for p in read_source(
            TrainSource("b3", "mmeb_neg", str(repo), subset="Sub", negatives=k)).rows]

    assert negs(True) == [[f"n{i}_{k}" for k in range(5)] for i in range(3)]
    assert negs(0) == [[], [], []]
    three = negs(3)
    assert three == negs(3)  # seeded by (source, row)
    assert all(len(n) == 3 and set(n) <= {f"n{i}_{k}" for k in range(5)} for i, n in enumerate(three))


def test_vidore_reads_colpali_train_set_as_the_reference(tmp_path):
    rows = [{"query": f"what is on page {i}?", "image": {"bytes": _png(c), "path": None}, "image_filename": f"p{i}.png",
             "answer": f"answer {i}", "prompt": "long prompt ignored", "source": "s", "options": "", "page": "1",
             "model": "m", "answer_type": "t"} for i, c in enumerate(["red", "blue"])]
    fields = {k: "image" if k == "image" else _value("string") for k in rows[0]}
    repo = _single_config_repo(tmp_path / "colpali_train_set", rows, fields)
    s = TrainSource("colpali", "vidore", str(repo), media_root=str(tmp_path / "pages"))
    result = read_source(s)
    assert len(result.rows) == 2 and result.skipped == {}
    for pair, raw in zip(result.rows, rows):
        assert pair.query.text == ref_vidore_process_query(raw["query"], "", IMAGE_TOKEN)  # prompt column ignored
        assert pair.positive.text == raw["answer"] and pair.positive.image is None
        assert Path(pair.query.image).read_bytes() == raw["image"]["bytes"]  # the page, its own bytes
    assert read_source(s).rows[1].query.image == result.rows[1].query.image  # written once, found again


def _value(dtype):
    from datasets import Value

    return Value(dtype)


def test_visrag_prompts_follow_the_row_source(tmp_path):
    rows = [{"query": "q one", "image": {"bytes": _png(), "path": None}, "source": "ChartQA"},
            {"query": "q two", "image": {"bytes": _png("blue"), "path": None}, "source": "SomewhereElse"}]
    repo = _single_config_repo(tmp_path / "visrag", rows, {"query": _value("string"), "image": "image",
                                                           "source": _value("string")})
    s = TrainSource("visrag", "visrag", str(repo), media_root=str(tmp_path / "pages"))
    result = read_source(s)
    from datamodules.mmeb_v2_train import VISRAG_QUERY_PROMPTS, VISRAG_TARGET_PROMPTS

    for pair, raw in zip(result.rows, rows):
        q_prompt = VISRAG_QUERY_PROMPTS.get(raw["source"], "")
        t_prompt = VISRAG_TARGET_PROMPTS.get(raw["source"], "")
        assert pair.query.text == ref_visrag_process_query(raw["query"], q_prompt, "")
        assert pair.positive.text == ref_visrag_process_query("", t_prompt, IMAGE_TOKEN)
        assert pair.query.image is None and Path(pair.positive.image).is_file()
    assert result.rows[0].query.instruction == VISRAG_QUERY_PROMPTS["ChartQA"]
    assert result.rows[1].query.instruction is None and result.notes["source_without_prompt"] == 1
    custom = read_source(TrainSource("visrag", "visrag", str(repo), media_root=str(tmp_path / "pages"),
                                     query_instruction="Find the page:", target_instruction=""))
    assert custom.rows[0].query.text == "Find the page: q one " and custom.rows[0].positive.text == f" {IMAGE_TOKEN}"


def _llava(tmp_path: Path):
    frames = tmp_path / "frames"
    rows = []
    for i in range(4):
        video = f"v{i}"
        if i != 1:  # v1 has no folder; v3's folder holds no frame
            (frames / video).mkdir(parents=True)
        if i in (0, 2):
            for k in range(3):
                Image.new("RGB", (8, 8)).save(frames / video / f"c{k:02d}.jpeg")
        rows.append({"id": f"id{i}", "video": video, "conversations": [
            {"from": "human", "value": f"<video>\nDescribe video {i}."}, {"from": "gpt", "value": f"caption {i}"}]})
    path = tmp_path / "video_caption.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, frames, rows


@pytest.mark.parametrize("mode", ["caption_retrieval", "video_retrieval", "qa"])
def test_llavahound_reads_and_skips_rows_without_frames_as_the_reference(tmp_path, caplog, mode):
    path, frames, rows = _llava(tmp_path)
    parser = "llavahound_qa" if mode == "qa" else "llavahound_caption"
    s = TrainSource("hound", parser, str(path), media_root=str(frames), data_mode=None if mode == "qa" else mode)
    with caplog.at_level(logging.WARNING):
        result = read_source(s)
    assert [p.row for p in result.rows] == [0, 2]  # `if len(frame_paths) == 0: continue`
    assert result.skipped == {"no_frames": 2} and "skipped 2 of 4 rows" in caplog.text
    for pair in result.rows:
        conv = rows[pair.row]["conversations"]
        query, positive = ref_llava_qa(conv) if mode == "qa" else ref_llava_caption(conv, mode)
        assert (pair.query.text, pair.positive.text) == (query, positive)
        video_side = pair.positive if mode == "video_retrieval" else pair.query
        other = pair.query if mode == "video_retrieval" else pair.positive
        assert video_side.video == str(frames / rows[pair.row]["video"]) and other.video is None
    assert len(read_source(TrainSource("hound", parser, str(path), media_root=str(frames), max_samples=1)).rows) == 1


def test_bad_input_is_named(tmp_path, write_repo):
    path, frames, _ = _llava(tmp_path)
    with path.open("a") as f:
        f.write("{not json\n")
    with pytest.raises(DataError, match=r"video_caption.jsonl:5 is not valid JSON"):
        read_source(TrainSource("hound", "llavahound_caption", str(path), media_root=str(frames)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": 1, "video": "v0"}) + "\n")
    with pytest.raises(DataError, match=r"'hound', row 0, field 'conversations'"):
        read_source(TrainSource("hound", "llavahound_qa", str(bad), media_root=str(frames)))
    with pytest.raises(DataError, match="unknown parser 'docmatix'"):
        TrainSource("x", "docmatix", "somewhere")
    with pytest.raises(DataError, match="weight must be a finite number"):
        TrainSource("x", "mmeb", "somewhere", subset="s", weight=-1)
    with pytest.raises(DataError, match=r"unknown key\(s\) \['wieght'\]"):
        sources_from_config({"x": {"parser": "mmeb", "source": "a/b", "subset": "s", "wieght": 1}})
    repo = _single_config_repo(tmp_path / "nopage", [{"query": "q", "image": None, "answer": "a"}],
                               {"query": _value("string"), "image": "image", "answer": _value("string")})
    with pytest.raises(DataError, match=r"row 0, field 'image': no page image"):
        read_source(TrainSource("colpali", "vidore", str(repo), media_root=str(tmp_path / "pages")))
    rows = [dict(MMEB_ROWS[0], qry="<image> literal token")]
    repo = write_repo(tmp_path / "tok", {"Sub": {"original": pa.Table.from_pylist(rows)}})
    with pytest.raises(DataError, match=r"row 0, field 'qry'.*model token"):
        read_source(TrainSource("t", "mmeb", str(repo), subset="Sub"))
