"""Video loading on short videos generated here with PyAV: the reference's two-stage uniform frame sampling
(hand-worked indices), decoding of mp4 (frame count from the container) and lossless mkv (no count: counted by
decoding), frame folders in natural order, and named errors for missing, corrupt and frame-less videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.errors import DataError
from datamodules.video import VideoLoader, is_video_path, sample_indices

av = pytest.importorskip("av")

W, H = 32, 24


def frame_array(i: int) -> np.ndarray:
    """Frame i encodes its index: left half (i // 10) * 25, right half (i % 10) * 25 (survives lossy codecs)."""
    a = np.zeros((H, W, 3), np.uint8)
    a[:, : W // 2] = (i // 10) * 25
    a[:, W // 2 :] = (i % 10) * 25
    return a


def frame_index(image: Image.Image) -> int:
    a = np.asarray(image, dtype=float)
    tens = a[4:-4, 4 : W // 2 - 4].mean() / 25
    ones = a[4:-4, W // 2 + 4 : -4].mean() / 25
    return int(round(tens)) * 10 + int(round(ones))


def write_video(path: Path, n: int, codec: str = "ffv1", fps: int = 10) -> Path:
    pix = {"ffv1": "bgr0", "mpeg4": "yuv420p"}[codec]
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, pix
        for i in range(n):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_array(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


# ----------------------------------------------------------------------------------------------- sampling
def test_sample_indices_hand_worked():
    # 100 frames: 64 saved at floor(i * 100 / 64); then linspace(0, 63, 8).astype(int) = 0, 9, 18, ..., 63
    # -> floor(9 * 1.5625) = 14, floor(18 * 1.5625) = 28, floor(27 * 1.5625) = 42, ... floor(63 * 1.5625) = 98
    assert sample_indices(100, 8, 64) == [0, 14, 28, 42, 56, 70, 84, 98]
    # 10 frames (all saved): linspace(0, 9, 8) = 0, 1.29, 2.57, 3.86, 5.14, 6.43, 7.71, 9 -> truncated
    assert sample_indices(10, 8, 64) == [0, 1, 2, 3, 5, 6, 7, 9]
    assert sample_indices(5, 8, 64) == [0, 1, 2, 3, 4]          # fewer frames than asked: all of them
    assert sample_indices(100, 8, None) == [0, 14, 28, 42, 56, 70, 84, 99]
    assert sample_indices(0, 8, 64) == []
    with pytest.raises(ValueError, match="num_frames"):
        sample_indices(10, 0)


# ----------------------------------------------------------------------------------------------- decoding
def test_lossless_video_without_frame_count_is_sampled_like_the_reference(tmp_path):
    path = write_video(tmp_path / "clip.mkv", 100)   # mkv stores no frame count: counted by decoding
    clip = VideoLoader(tmp_path, num_frames=8, max_frames_saved=64).load("clip.mkv")
    assert clip.indices == (0, 14, 28, 42, 56, 70, 84, 98) and clip.total_frames == 100
    assert [frame_index(f) for f in clip.frames] == list(clip.indices)
    assert clip.fps == pytest.approx(10.0) and clip.source == str(path)
    assert all(f.mode == "RGB" and f.size == (W, H) for f in clip.frames)


def test_mp4_with_frame_count_and_short_video(tmp_path):
    write_video(tmp_path / "a.mp4", 12, codec="mpeg4", fps=4)
    with av.open(str(tmp_path / "a.mp4")) as c:
        assert c.streams.video[0].frames == 12              # this path trusts the container's count
    clip = VideoLoader(tmp_path, num_frames=8).load("a.mp4")
    assert clip.indices == tuple(np.linspace(0, 11, 8, dtype=int).tolist())
    assert [frame_index(f) for f in clip.frames] == list(clip.indices)
    assert clip.fps == pytest.approx(4.0)
    short = VideoLoader(tmp_path, num_frames=8).load(str(write_video(tmp_path / "b.mp4", 3, codec="mpeg4")))
    assert short.indices == (0, 1, 2) and len(short) == 3


def test_frame_folder_in_natural_order(tmp_path):
    folder = tmp_path / "frames" / "vid7"
    folder.mkdir(parents=True)
    for i in range(20):   # frame_1 ... frame_20: a plain sort would put frame_10 before frame_2
        Image.fromarray(frame_array(i)).save(folder / f"frame_{i + 1}.png")
    (folder / "notes.txt").write_text("not a frame")
    clip = VideoLoader(tmp_path / "frames", num_frames=8).load("vid7")
    assert clip.indices == (0, 2, 5, 8, 10, 13, 16, 19)   # linspace(0, 19, 8).astype(int)
    assert [frame_index(f) for f in clip.frames] == list(clip.indices)
    assert clip.fps is None and clip.total_frames == 20
    assert is_video_path(folder) and is_video_path("x/y.MP4") and not is_video_path("x/y.png")


# ----------------------------------------------------------------------------------------------- bad files
def _zero_frame_video(tmp_path: Path) -> Path:
    """A container with a video stream and no decodable frame: a lossless mkv cut right after its header."""
    data = write_video(tmp_path / "full.mkv", 5).read_bytes()
    for n in range(200, len(data)):
        cut = tmp_path / "zero.mkv"
        cut.write_bytes(data[:n])
        try:
            with av.open(str(cut)) as c:
                if c.streams.video and sum(1 for _ in c.decode(video=0)) == 0:
                    return cut
        except (av.FFmpegError, OSError):
            continue
    pytest.skip("could not build a zero-frame container with this FFmpeg build")


def test_bad_videos_get_named_errors(tmp_path):
    loader = VideoLoader(tmp_path, num_frames=4)
    where = dict(dataset="MSR-VTT", row=7, field="video")

    with pytest.raises(DataError, match=r"dataset 'MSR-VTT', row 7, field 'video': video .*missing\.mp4 not found "
                                        r"\(video root is .*\)") as e:
        loader.load("missing.mp4", **where)
    assert (e.value.dataset, e.value.row, e.value.field) == ("MSR-VTT", 7, "video")

    (tmp_path / "noise.mp4").write_bytes(os.urandom(4000))
    with pytest.raises(DataError, match=r"row 7.*noise\.mp4 cannot be decoded .*corrupt"):
        loader.load("noise.mp4", **where)

    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    with pytest.raises(DataError, match=r"text\.mp4 cannot be decoded"):
        loader.load("text.mp4", **where)

    zero = _zero_frame_video(tmp_path)
    with pytest.raises(DataError, match=rf"{zero.name} has no video frames"):
        loader.load(zero.name, **where)

    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"frame folder .*empty_dir holds no frames"):
        loader.load("empty_dir", **where)

    bad = tmp_path / "bad_frames"
    bad.mkdir()
    Image.fromarray(frame_array(0)).save(bad / "0001.jpg")
    (bad / "0002.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"frame .*0002\.jpg cannot be read"):
        loader.load("bad_frames", **where)

    with pytest.raises(ValueError, match="num_frames"):
        VideoLoader(tmp_path, num_frames=0)


def test_wrong_container_frame_count_is_corrected_by_decoding(tmp_path, monkeypatch):
    write_video(tmp_path / "clip.mkv", 100)
    for claimed in (150, 60):  # a header that over- or under-counts: sample from the frames that really decode
        monkeypatch.setattr(VideoLoader, "_probe", staticmethod(lambda path, n=claimed: (n, 10.0)))
        clip = VideoLoader(tmp_path, num_frames=8, max_frames_saved=64).load("clip.mkv")
        assert clip.total_frames == 100 and clip.indices == (0, 14, 28, 42, 56, 70, 84, 98)
        assert [frame_index(f) for f in clip.frames] == list(clip.indices)
