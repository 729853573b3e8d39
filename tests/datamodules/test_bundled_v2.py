"""The bundled offline MMEB-V2 suite generator: hub layouts that `datasets` reads, media the video loader reads,
graded BEIR judgements, labels that match what the videos show, a deterministic and atomic build."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from datamodules.builders.bundled_v2 import (
    BUNDLED_V2,
    MANIFEST,
    MOTION_LABELS,
    _generate,
    ensure_bundled_v2,
    eval_config,
    motion_frames,
)
from datamodules.video import VideoLoader
from evaluation.retrieval import ranking_metrics

pytest.importorskip("av")
CONF = Path(__file__).resolve().parents[2] / "conf"
N = 3


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    return ensure_bundled_v2(tmp_path_factory.mktemp("v2") / "suite", queries_per_dataset=N)


def _load(suite, repo, config, split, tmp_path):
    import datasets

    return datasets.load_dataset(str(suite / "hub" / repo), config, split=split, cache_dir=str(tmp_path / "cache"))


def test_catalog_manifest_and_config(suite):
    manifest = json.loads((suite / MANIFEST).read_text())
    assert manifest["datasets"] == {n: d.to_config() for n, d in BUNDLED_V2.items()}
    assert {d.modality for d in BUNDLED_V2.values()} == {"image", "video", "visdoc"}
    assert {d.ranking for d in BUNDLED_V2.values()} == {"candidates", "corpus"}
    assert manifest["labels"]["ShapeMotionCls"] == list(MOTION_LABELS)
    assert (CONF / "eval_data" / "mmeb_v2_bundled.yaml").read_text() == eval_config(), (
        "conf/eval_data/mmeb_v2_bundled.yaml is stale: run `python -m datamodules.builders.bundled_v2 --write-config "
        "conf/eval_data`")


def test_image_tasks_in_the_instruction_layout(suite, tmp_path):
    media = suite / "media" / BUNDLED_V2["ShapeCls"].media["image_root"]
    cls = _load(suite, "MMEB_Test_Instruct", "ShapeCls", "test", tmp_path)
    assert cls.column_names == ["qry_inst", "qry_text", "qry_img_path", "tgt_inst", "tgt_text", "tgt_img_path"]
    assert len(cls) == N and (media / cls[0]["qry_img_path"]).is_file()
    assert len(set(cls[0]["tgt_text"])) == len(cls[0]["tgt_text"]) == 30   # the full label set, truth first
    t2i = _load(suite, "MMEB_Test_Instruct", "ShapeT2I", "test", tmp_path)
    assert t2i[0]["qry_img_path"] == "" and all((media / p).is_file() for p in t2i[0]["tgt_img_path"])


def test_video_tasks_decode_and_match_their_labels(suite, tmp_path):
    media = suite / "media"
    cls = _load(suite, "ShapeMotionCls", None, "test", tmp_path)
    assert cls.column_names == ["video_id", "pos_text"] and set(cls["pos_text"]) <= set(MOTION_LABELS)
    spec = BUNDLED_V2["ShapeMotionCls"].media
    loader = VideoLoader(media / spec["video_root"], num_frames=spec["num_frames"], max_frames_saved=64)
    for row in cls:
        clip = loader.load(f"{row['video_id']}.mp4", dataset="ShapeMotionCls")
        assert len(clip) == 8 and clip.total_frames == 16 and clip.fps == pytest.approx(8)
        # the moving shape is the only non-background object: its centroid moves the way the label says
        first, last = (_centroid(clip.frames[0]), _centroid(clip.frames[-1]))
        dx, dy = last[0] - first[0], last[1] - first[1]
        direction = row["pos_text"].rsplit(" ", 1)[1]
        assert {"left": dx < -10, "right": dx > 10, "up": dy < -5, "down": dy > 5}[direction], (row, dx, dy)
    ret = _load(suite, "ShapeVideoRet", None, "test", tmp_path)
    assert ret.column_names == ["video_id", "video", "caption"]
    assert (media / BUNDLED_V2["ShapeVideoRet"].media["video_root"] / ret[0]["video"]).is_file()
    qa = _load(suite, "ShapeVideoQA", None, "test", tmp_path)
    assert qa.column_names == ["video", "question", "answer", "qid", "type", "a0", "a1", "a2", "a3", "a4"]
    spec = BUNDLED_V2["ShapeVideoQA"].media
    for row in qa:
        clip = VideoLoader(media / spec["video_root"], num_frames=8).load(f"{row['video']}.mp4")
        (x0, y0), (x1, y1) = _centroid(clip.frames[0]), _centroid(clip.frames[-1])
        moved = ("left" if x1 < x0 else "right") if abs(x1 - x0) > abs(y1 - y0) else ("up" if y1 < y0 else "down")
        assert row[f"a{row['answer']}"] == moved
    moment = _load(suite, "ShapeMoment", None, "test", tmp_path)
    folders = media / BUNDLED_V2["ShapeMoment"].media["frame_root"] / moment[0]["video_path"].removesuffix(".mp4")
    names = sorted(p.name for p in folders.iterdir())
    assert names == ["negative_0", "negative_1", "negative_2", "positive_0", "query"]
    frames = VideoLoader(folders, num_frames=8)
    assert len(frames.load("query")) == 8 and frames.load("query").total_frames == 32
    assert len(frames.load("positive_0")) == 8


def _centroid(frame):
    a = np.asarray(frame.convert("RGB"), dtype=float)
    background = np.array([246, 245, 240], dtype=float)
    ys, xs = np.nonzero(np.abs(a - background).sum(-1) > 60)
    return xs.mean(), ys.mean()


def test_visdoc_tasks_in_the_beir_layout_with_graded_judgements(suite, tmp_path):
    for name, split, graded in (("ShapeDocs", "test", True), ("ShapeSlides", "train", False)):
        corpus = _load(suite, name, "corpus", split, tmp_path)
        queries = _load(suite, name, "queries", split, tmp_path)
        qrels = _load(suite, name, "qrels", split, tmp_path)
        assert corpus.column_names == ["corpus-id", "image"] and corpus[0]["image"].size == (96, 128)
        assert queries.column_names == ["query-id", "query"] and qrels.column_names == ["query-id", "corpus-id", "score"]
        judged = {}
        for r in qrels:
            judged.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = r["score"]
        assert set(judged) == {str(q) for q in queries["query-id"]}
        assert {str(c) for c in judged_docs(judged)} <= {str(c) for c in corpus["corpus-id"]}
        assert ({1, 2} <= set(qrels["score"])) if graded else set(qrels["score"]) == {1}
        # the ideal ranking scores 1 on every metric: every query has a relevant page in the corpus
        ideal = [sorted(judged[q], key=lambda d: -judged[q][d]) for q in judged]
        assert ranking_metrics(ideal, list(judged), judged, ks=(5,))["ndcg_linear@5"] == pytest.approx(1.0)


def judged_docs(judged):
    return {d for docs in judged.values() for d in docs}


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_is_deterministic_and_seeded(suite, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    _generate(again, seed=0, queries=N)
    reference = _tree_digest(suite)
    assert _tree_digest(again) == reference
    _generate(other, seed=1, queries=N)
    differing = {k for k, v in _tree_digest(other).items() if reference.get(k) != v}
    assert any(k.endswith(".mp4") for k in differing) and any(k.endswith(".parquet") for k in differing)


def test_build_is_atomic_and_idempotent(suite, tmp_path):
    stamp = (suite / MANIFEST).stat().st_mtime_ns
    assert ensure_bundled_v2(suite, queries_per_dataset=N) == suite
    assert (suite / MANIFEST).stat().st_mtime_ns == stamp            # complete: not rebuilt
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a bundled V2 suite"):
        ensure_bundled_v2(foreign, queries_per_dataset=N)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="queries_per_dataset"):
        ensure_bundled_v2(tmp_path / "x", queries_per_dataset=0)
    # an interrupted build leaves only a hidden sibling, which the next build removes; the root stays complete
    stale = tmp_path / ".built.building-123"
    stale.mkdir()
    built = ensure_bundled_v2(tmp_path / "built", queries_per_dataset=1)
    assert (built / MANIFEST).is_file() and not stale.exists()
    assert not list(tmp_path.glob(".built.*"))


def test_motion_frames_move_as_named():
    for direction, (axis, sign) in {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}.items():
        frames = motion_frames("circle", "red", direction, n=6)
        start, end = _centroid(frames[0]), _centroid(frames[-1])
        assert sign * (end[axis] - start[axis]) > 5, direction
