"""The MMEB-V2 video readers added for SSv2, Video-MME, MVBench, EgoSchema, ActivityNetQA, DiDeMo, MSVD, VATEX,
YouCook2 and MomentSeeker: each reads a tiny local snapshot in the hub layout its reference parser reads, and the
rows (texts, candidates, correct indices, media paths) equal values worked out by hand from the reference code
(TIGER-AI-Lab/VLM2Vec main, `src/data/eval_dataset/<parser>_dataset.py`, cited per test). Bad rows raise a
DataError naming dataset, row and field."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datamodules.builders.bundled_v2 import motion_frames, write_video
from datamodules.errors import DataError
from datamodules.media import MediaLoader
from datamodules.mmeb_v2 import MMEB_V2
from datamodules.mmeb_v2_readers import SuitePaths, read_v2_dataset

pytest.importorskip("av")

# The reference's TASK_PROMPT of the video-QA parsers (videomme_dataset.py:18, mvbench_dataset.py:101, ...).
QA = ("Given a video and a question, select the most accurate answer from the provided candidates. "
      "Return only the exact text of your chosen answer. Question: ")
TGT = "Understand the content of the provided video."


def _repo(hub: Path, source: str, configs: dict[str, tuple[str, list[dict]]]) -> None:
    """`configs[name] = (split, rows)`: `data/` for the single-config video repos, `<config>/` otherwise."""
    lines = ["---", "configs:"]
    for name, (split, rows) in configs.items():
        folder = "data" if list(configs) == ["default"] else name
        (hub / source / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), hub / source / folder / f"{split}-00000-of-00001.parquet")
        lines += [f"- config_name: {name}", "  data_files:", f"  - split: {split}",
                  f"    path: {folder}/{split}-*.parquet"]
    (hub / source / "README.md").write_text("\n".join(lines + ["---", ""]))


def _frames(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, frame in enumerate(motion_frames("circle", "red", "left", n=n)):
        frame.save(folder / f"frame_{k:04d}.jpg")


def _read(tmp_path: Path, name: str, rows, max_rows=None, configs=None):
    d = MMEB_V2[name]
    hub, media = tmp_path / "hub", tmp_path / "media"
    _repo(hub, d.source, configs or {"default": (d.split, rows)})
    return read_v2_dataset(d, SuitePaths(str(media), str(hub)), max_rows), media


def test_ssv2_candidates_are_the_rows_label_list(tmp_path):
    # ssv2_dataset.py:20-41: query = process_input_text(DATASET_INSTRUCTION['SmthSmthV2'], add_video_token=True)
    # = "<video> " + instruction; cand_text = neg_text; label_name = pos_text; frames <frame_root>/<video_id> when
    # saved, else <video_root>/<video_id>.mp4 (:23-26).
    media = tmp_path / "media"
    _frames(media / "video-tasks/frames/video_cls/SSv2/17")
    rows = [{"video_id": 17, "pos_text": "b", "neg_text": ["a", "b", "c", "b"]},
            {"video_id": 18, "pos_text": "c", "neg_text": ["c", "d"]}]
    read, _ = _read(tmp_path, "SmthSmthV2", rows)
    r0, r1 = read.rows
    instr = "What actions or object interactions are being performed by the person in the video?"
    assert r0.query.text == f"<|video_1|> {instr}" and r0.query.instruction == instr
    assert r0.query.video == "video-tasks/frames/video_cls/SSv2/17"
    assert r1.query.video == "video-tasks/videos/video_cls/SSv2/18.mp4"
    assert [c.text for c in r0.candidates] == ["a", "b", "c", "b"] and r0.relevant == (1, 3)
    assert r1.relevant == (0,)
    assert len(MediaLoader(read.root, read.num_frames).load_visual(r0.query)) == 3
    bad = [{"video_id": 1, "pos_text": "z", "neg_text": ["a", "b"]}]
    with pytest.raises(DataError, match=r"'SmthSmthV2', row 0, field 'pos_text'"):
        _read(tmp_path / "bad", "SmthSmthV2", bad)


def test_ssv2_keeps_the_first_1000_rows(tmp_path):
    # video.yaml SmthSmthV2 num_sample_per_subset: 1000; sample_dataset = dataset.select(range(1000)).
    rows = [{"video_id": k, "pos_text": "a", "neg_text": ["a", "b"]} for k in range(1003)]
    read, _ = _read(tmp_path, "SmthSmthV2", rows)
    assert len(read.rows) == 1000 and read.rows[-1].query.video.endswith("/999.mp4")
    assert len(_read(tmp_path / "m", "SmthSmthV2", rows, max_rows=5)[0].rows) == 5


def test_videomme_options_and_answer_letter(tmp_path):
    # videomme_dataset.py:32 query = f"{video_token} {TASK_PROMPT} {question}\n" + "\n".join(options);
    # :63 cand = o[o.find('. '):].strip('. '); :71 label = options[OPTIONS.index(answer)].
    rows = [{"question": "What is shown?", "videoID": "vid1", "options": ["A. A cat.", "B. Dogs", "C. x. y.", "D. 4"],
             "answer": "C", "question_id": "q1", "domain": "d", "sub_category": "s"}]
    read, _ = _read(tmp_path, "Video-MME", rows)
    (r,) = read.rows
    assert r.query.text == f"<|video_1|> {QA} What is shown?\nA. A cat.\nB. Dogs\nC. x. y.\nD. 4"
    assert r.query.instruction == QA and r.query.video == "video-tasks/videos/video_qa/Video-MME/vid1.mp4"
    assert [c.text for c in r.candidates] == ["A cat", "Dogs", "x. y", "4"] and r.relevant == (2,)
    bad = [{**rows[0], "answer": "E"}]
    with pytest.raises(DataError, match=r"'Video-MME', row 0, field 'answer'"):
        _read(tmp_path / "bad", "Video-MME", bad)
    bad = [{**rows[0], "options": ["A cat", "B. Dogs"], "answer": "A"}]
    with pytest.raises(DataError, match=r"'Video-MME', row 0, field 'options\[0\]'"):
        _read(tmp_path / "bad2", "Video-MME", bad)


def test_egoschema_question_glued_to_options(tmp_path):
    # egoschema_dataset.py:32 query = f"{video_token} {TASK_PROMPT} " + question + ' '.join(options) (no separator);
    # :33 answer_idx = int(answer); :64 cands stripped of their letters.
    rows = [{"video_idx": "e1", "question": "What does c do?", "answer": "1", "question_idx": "q",
             "option": ["A. c cooks.", "B. c reads."]}]
    read, _ = _read(tmp_path, "EgoSchema", rows, configs={"Subset": ("test", rows)})
    (r,) = read.rows
    assert r.query.text == f"<|video_1|> {QA} What does c do?A. c cooks. B. c reads."
    assert [c.text for c in r.candidates] == ["c cooks", "c reads"] and r.relevant == (1,)
    assert r.query.video == "video-tasks/videos/video_qa/EgoSchema/e1.mp4"
    bad = [{**rows[0], "answer": "2"}]
    with pytest.raises(DataError, match=r"'EgoSchema', row 0, field 'answer'"):
        _read(tmp_path / "bad", "EgoSchema", bad, configs={"Subset": ("test", bad)})


def test_activitynetqa_yes_no(tmp_path):
    # activitynetqa_dataset.py:36 query + '? (A) yes; (B) no.'; :38-39 v_<video_name>; :67 OPTIONS = ['yes', 'no'].
    media = tmp_path / "media"
    _frames(media / "video-tasks/frames/video_qa/ActivityNetQA/v_abc")
    rows = [{"video_name": "abc", "question": "is it raining", "answer": "no", "question_id": "1"},
            {"video_name": "def", "question": "is he running", "answer": "yes", "question_id": "2"}]
    read, _ = _read(tmp_path, "ActivityNetQA", rows)
    r0, r1 = read.rows
    assert r0.query.text == f"<|video_1|> {QA} is it raining? (A) yes; (B) no."
    assert [c.text for c in r0.candidates] == ["yes", "no"] and r0.relevant == (1,) and r1.relevant == (0,)
    assert r0.query.video == "video-tasks/frames/video_qa/ActivityNetQA/v_abc"
    assert r1.query.video == "video-tasks/videos/video_qa/ActivityNetQA/v_def.mp4"
    with pytest.raises(DataError, match=r"'ActivityNetQA', row 1, field 'answer'"):
        _read(tmp_path / "bad", "ActivityNetQA", [rows[0], {**rows[1], "answer": "maybe"}])


def test_mvbench_concatenates_configs_in_reference_order(tmp_path):
    # mvbench_dataset.py:178 the subsets in subset_meta order (:24-45), concatenated; :116-117 process_query then
    # qa_template (vision_utils.py:34-46): cands "(A) c", answer index = last candidate equal to `answer`;
    # :118-119 frames <frame_root>/<subset>/<video>, video <video_root>/<subset video_path>/<video>.
    media = tmp_path / "media"
    _frames(media / "video-tasks/frames/video_qa/MVBench/action_sequence/s1.mp4")
    er = [{"video": "ep1", "question": "Who talks?", "candidates": ["Ann", "Bob", "Ann"], "answer": "Ann"},
          {"video": "ep2", "question": "Why?", "candidates": ["x", "y"], "answer": "y"}]
    seq = [{"video": "s1.mp4", "question": "What next?", "candidates": ["sit", "run"], "answer": "sit"}]
    configs = {"episodic_reasoning": ("train", er), "action_sequence": ("train", seq)}
    read, _ = _read(tmp_path, "MVBench", None, max_rows=3, configs=configs)
    r0, r1, r2 = read.rows
    assert r0.query.text == f"<|video_1|> {QA} Who talks?\nOptions:\n(A) Ann\n(B) Bob\n(C) Ann"
    assert [c.text for c in r0.candidates] == ["(A) Ann", "(B) Bob", "(C) Ann"] and r0.relevant == (2,)
    assert r0.query.video == "video-tasks/videos/video_qa/MVBench/tvqa/frames_fps3_hq/ep1"
    assert r1.relevant == (1,) and r2.relevant == (0,) and r2.row == 2
    assert r2.query.video == "video-tasks/frames/video_qa/MVBench/action_sequence/s1.mp4"
    bad = {"episodic_reasoning": ("train", [{**er[0], "answer": "Cid"}])}
    with pytest.raises(DataError, match=r"'MVBench', row 0, field 'answer'"):
        _read(tmp_path / "bad", "MVBench", None, max_rows=1, configs=bad)


@pytest.mark.parametrize("name,rows,query,videos", [
    # didemo_dataset.py:10,21-30: name = stem of basename(video); file = <video_root>/<basename>.
    ("DiDeMo", [{"video": "x/v1.mp4", "caption": "a man jumps"}, {"video": "y/v1.mp4", "caption": "he lands"}],
     "Find a video that includes the following described scenes: a man jumps", {"v1": "v1.mp4"}),
    # msvd_dataset.py:10,21-28: caption = captions[0]; file = <video_root>/<video>; frames <frame_root>/<video_id>.
    ("MSVD", [{"video_id": "m1", "video": "m1.avi", "caption": ["a dog runs", "dog"]},
              {"video_id": "m2", "video": "m2.avi", "caption": ["cats"]}],
     "Find the video snippet that corresponds to the given summary: a dog runs", {"m1": "m1.avi", "m2": "m2.avi"}),
    # vatex_dataset.py:10,21-27: caption = enCap[0]; file = <videoID>.mp4.
    ("VATEX", [{"videoID": "vx", "enCap": ["people dance", "dance"]}],
     "Select a video that fits the description provided: people dance", {"vx": "vx.mp4"}),
    # youcook2_dataset.py:10,21-27: name = id; file = basename(video_path).
    ("YouCook2", [{"id": "seg1", "video_path": "val/abc.mp4", "sentence": "chop onions"},
                  {"id": "seg2", "video_path": "val/abc.mp4", "sentence": "fry"}],
     "Find a video that demonstrates the following action while making a recipe: chop onions",
     {"seg1": "abc.mp4", "seg2": "abc.mp4"}),
])
def test_text_to_video_retrieval_corpus(tmp_path, name, rows, query, videos):
    # The reference ranks globally (video.yaml eval_type: global) over candidates keyed by video name
    # (eval.py:303-305 cand_embed_dict keys), with the candidate text "<video> " + TASK_INST_TGT.
    read, _ = _read(tmp_path, name, rows)
    task = read.task
    assert task.queries[0].text == query and task.queries[0].video is None
    assert task.queries[0].instruction == query.split(": ")[0] + ":"
    root = MMEB_V2[name].media["video_root"]
    assert dict(zip(task.corpus_ids, (c.video for c in task.corpus))) == {k: f"{root}/{v}" for k, v in videos.items()}
    assert {c.text for c in task.corpus} == {f"<|video_1|> {TGT}"}
    assert task.qrels == {str(i): {n: 1.0} for i, n in enumerate(
        [list(videos)[0]] * len(rows) if len(videos) == 1 else list(videos))}


def test_text_to_video_bad_caption_is_named(tmp_path):
    with pytest.raises(DataError, match=r"'MSVD', row 0, field 'caption'"):
        _read(tmp_path, "MSVD", [{"video_id": "m1", "video": "m1.avi", "caption": []}])


def test_momentseeker_text_image_and_video_queries_with_several_positives(tmp_path):
    # momentseeker_dataset.py:12-15 instructions; :29-55 query by input_frames (.mp4 -> frames
    # <frame_root>/video_frames/<name with / as _>, .jpg -> <frame_root>/query_<file>, else text only);
    # :58-89 candidates = positives then negatives, frames <frame_root>/video_frames/<path with / as _, no .mp4>;
    # :93 label_name = the positive folders (every positive is correct).
    fr = "video-tasks/frames/video_mret/MomentSeeker"
    clip = lambda p: {"output_path": p, "start": 0.0}  # noqa: E731
    rows = [
        {"query": "a goal", "input_frames": "", "positive_frames": [clip("m/a.mp4"), clip("m/b.mp4")],
         "negative_frames": [clip("m/c.mp4")]},
        {"query": "the same dog", "input_frames": "img/7.jpg", "positive_frames": [clip("d/p.mp4")],
         "negative_frames": [clip("d/n1.mp4"), clip("d/n2.mp4")]},
        {"query": "what follows", "input_frames": "movie/101_77.mp4", "positive_frames": [clip("x.mp4")],
         "negative_frames": []},
    ]
    read, _ = _read(tmp_path, "MomentSeeker", rows)
    r0, r1, r2 = read.rows
    assert r0.query.text == "Find the clip that corresponds to the given text: a goal" and not r0.query.has_visual
    assert r1.query.text == "<|image_1|> Select the video clip that aligns with the given text and image: the same dog"
    assert r1.query.image == f"{fr}/query_img/7.jpg"
    assert r2.query.text == ("<|video_1|> Find the clip that corresponds to the given sentence and video segment: "
                             "what follows")
    assert r2.query.video == f"{fr}/video_frames/movie_101_77"
    assert [c.video for c in r0.candidates] == [f"{fr}/video_frames/m_a", f"{fr}/video_frames/m_b",
                                                f"{fr}/video_frames/m_c"]
    assert {c.text for c in r0.candidates} == {"<|video_1|> Understand the content of the provided video clip."}
    assert r0.relevant == (0, 1) and r1.relevant == (0,) and len(r1.candidates) == 3 and len(r2.candidates) == 1
    bad = [{**rows[0], "positive_frames": []}]
    with pytest.raises(DataError, match=r"'MomentSeeker', row 0, field 'positive_frames'"):
        _read(tmp_path / "bad", "MomentSeeker", bad)
    bad = [{**rows[0], "negative_frames": [{"output_path": None, "start": 0.0}]}]
    with pytest.raises(DataError, match=r"row 0, field 'negative_frames\[0\].output_path'"):
        _read(tmp_path / "bad2", "MomentSeeker", bad)


def test_every_video_parser_has_a_reader():
    from datamodules.mmeb_v2_readers import READERS

    assert {d.parser for d in MMEB_V2.values()} <= set(READERS)


def test_a_video_file_row_loads(tmp_path):
    """The path a reader writes is the one the loader opens (a generated mp4 under video_root)."""
    rows = [{"video_id": "m1", "video": "m1.mp4", "caption": ["a circle moves"]}]
    read, media = _read(tmp_path, "MSVD", rows)
    write_video(media / MMEB_V2["MSVD"].media["video_root"] / "m1.mp4", motion_frames("circle", "red", "left"))
    clip = MediaLoader(read.root, read.num_frames, read.max_frames_saved).load_visual(read.task.corpus[0])
    assert len(clip) == 8


def test_shipped_label_sets_are_the_references():
    # video_classification_utils.py:2-14 (VIDEOCLS_LABEL_MAPPING): sizes, and first entries copied by hand
    from datamodules.mmeb_v2_readers import load_labels

    labels = load_labels(None)
    assert {k: len(v) for k, v in labels.items()} == {"Kinetics-700": 700, "SmthSmthV2": 174, "UCF101": 101,
                                                       "HMDB51": 51, "Breakfast": 10}
    assert labels["Breakfast"] == ["pancake", "cereal", "sandwich", "scrambledegg", "friedegg", "coffee", "milk",
                                   "tea", "juice", "salad"]
    assert [labels[k][0] for k in ("Kinetics-700", "SmthSmthV2", "UCF101", "HMDB51")] == [
        "waiting_in_line", "Approaching something with your camera", "Kayaking", "ride_bike"]
    assert all(len(set(v)) == len(v) for v in labels.values())


def test_video_classification_ranks_the_label_set_plus_row_labels(tmp_path, caplog):
    # video_classification_datasets.py:61-64: corpus = VIDEOCLS_LABEL_MAPPING[dataset] next to the rows' own labels
    # (eval.py ranks the union, keyed by label); K700's reference name is Kinetics-700 (video.yaml).
    from datamodules.mmeb_v2_readers import load_labels

    d = MMEB_V2["Breakfast"]
    rows = [{"video_id": "b1", "pos_text": "tea"}, {"video_id": "b2", "pos_text": "toast"}]
    _repo(tmp_path / "hub", d.source, {"default": ("test", rows)})
    paths = SuitePaths(str(tmp_path / "media"), str(tmp_path / "hub"), labels=load_labels(None))
    with caplog.at_level("WARNING"):
        task = read_v2_dataset(d, paths).task
    assert list(task.corpus_ids) == load_labels(None)["Breakfast"] + ["toast"]
    assert "1 row label(s) are not in the dataset's label set" in caplog.text
    assert task.qrels == {"0": {"tea": 1.0}, "1": {"toast": 1.0}}
    instr = "Recognize the breakfast type that the person is cooking in the video. "
    assert task.queries[0].text == f"<|video_1|> {instr}" and [c.text for c in task.corpus[:2]] == ["pancake",
                                                                                                   "cereal"]
    bad = tmp_path / "labels.json"
    bad.write_text('{"Breakfast": "tea"}')
    with pytest.raises(DataError, match="field 'video_labels'.*lists of label strings"):
        load_labels(str(bad))


def test_step_frame_saving_of_the_video_qa_parsers(tmp_path):
    # videomme_dataset.py:42-55 (and nextqa, mvbench, egoschema, activitynetqa): step = max(1, total // 64), frames
    # 0, step, 2 step, ... while readable, at most 64; then process_video_frames -> np.linspace(0, n - 1, 8, int).
    # vision_utils.py:299-302 (save_frames, the other parsers): floor(i * total / 64).
    from datamodules.video import VideoLoader, sample_indices

    assert sample_indices(200, 8, 64, "step") == [0, 27, 54, 81, 108, 135, 162, 189]
    assert sample_indices(200, 8, 64, "spread") == [0, 28, 56, 84, 112, 140, 168, 196]
    assert sample_indices(100, 8, 64, "step") == [0, 9, 18, 27, 36, 45, 54, 63]  # the first 64 frames only
    assert sample_indices(30, 8, 64, "step") == [0, 4, 8, 12, 16, 20, 24, 29]
    with pytest.raises(ValueError, match="frame saving must be one of"):
        sample_indices(30, 8, 64, "even")
    write_video(tmp_path / "v.mp4", motion_frames("circle", "red", "left", n=20))
    assert VideoLoader(tmp_path, 4, 8, "step").load("v.mp4").indices == (0, 4, 8, 14)
    assert VideoLoader(tmp_path, 4, 8).load("v.mp4").indices == (0, 5, 10, 17)
    step = {n for n, d in MMEB_V2.items() if d.media.get("frame_saving") == "step"}
    assert step == {"NExTQA", "Video-MME", "MVBench", "EgoSchema", "ActivityNetQA"}
    read, _ = _read(tmp_path / "r", "ActivityNetQA", [{"video_name": "a", "question": "q", "answer": "no",
                                                       "question_id": "1"}])
    assert read.frame_saving == "step"


def test_an_empty_frame_folder_falls_back_to_the_video(tmp_path):
    # save_frames (vision_utils.py:291) and load_frames-based parsers extract again when the folder holds no frame
    (tmp_path / "media/video-tasks/frames/video_qa/ActivityNetQA/v_a").mkdir(parents=True)
    read, _ = _read(tmp_path, "ActivityNetQA", [{"video_name": "a", "question": "q", "answer": "no",
                                                 "question_id": "1"}])
    assert read.rows[0].query.video == "video-tasks/videos/video_qa/ActivityNetQA/v_a.mp4"
