"""Video loading relative to a media root: a video file (decoded with PyAV, FFmpeg's Python binding; no
torchvision) or a folder of extracted frames, sampled to `num_frames` frames the way the reference does it,
with errors that say which file, dataset, row and field is wrong.

Sampling (VLM2Vec, `src/utils/vision_utils/vision_utils.py`): a video file is first reduced to at most
`max_frames_saved` frames (64 in the MMEB-V2 configs), taken at floor(i * total / max_frames_saved)
(`save_frames`); from those, `num_frames` are picked at `np.linspace(0, n - 1, num_frames).astype(int)`
(`sample_frames`). A frame folder holds already-extracted frames (natural sort order, .jpg/.jpeg/.png) and gets
the second step only. A video with fewer frames than `num_frames` keeps all of them, as in the reference.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError
from .images import MediaRoot

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class VideoClip:
    """Sampled frames of one video. `indices` are the frames' positions in the source (decoded frame numbers, or
    positions in a frame folder's sorted listing); `fps` is the source frame rate (None for a frame folder)."""

    frames: tuple[Image.Image, ...]
    indices: tuple[int, ...]
    fps: float | None
    total_frames: int
    source: str

    def __len__(self) -> int:
        return len(self.frames)


#: How a video file is first reduced to `max_frames_saved` frames: `spread` = `save_frames` (floor(i * total / max),
#: most parsers); `step` = the OpenCV loop of the video-QA parsers (NExTQA, Video-MME, MVBench, EgoSchema,
#: ActivityNetQA: step = max(1, total // max), frames 0, step, 2 step, ... while < total, at most max of them).
FRAME_SAVING = ("spread", "step")


def sample_indices(total: int, num_frames: int, max_frames_saved: int | None = None,
                   saving: str = "spread") -> list[int]:
    """Source frame indices the reference keeps: (optionally) `max_frames_saved` frames by the `saving` rule,
    then `num_frames` picked uniformly from those; all frames when there are fewer than `num_frames`."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if saving not in FRAME_SAVING:
        raise ValueError(f"frame saving must be one of {FRAME_SAVING}, got {saving!r}")
    if total < 1:
        return []
    saved = list(range(total))
    if max_frames_saved is not None and saving == "step":
        step = max(1, total // max_frames_saved)
        saved = [k * step for k in range(max_frames_saved) if k * step < total]
    elif max_frames_saved is not None and total > max_frames_saved:
        step = total / max_frames_saved
        saved = [math.floor(i * step) for i in range(max_frames_saved)]
    if num_frames > len(saved):
        return saved
    return [saved[i] for i in np.linspace(0, len(saved) - 1, num_frames, dtype=int).tolist()]


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class VideoLoader(MediaRoot):
    """Opens video paths (relative to `root`) as `VideoClip`s of at most `num_frames` RGB frames."""

    def __init__(self, root: str | os.PathLike | None, num_frames: int = 8, max_frames_saved: int | None = 64,
                 saving: str = "spread"):
        if int(num_frames) < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if saving not in FRAME_SAVING:
            raise ValueError(f"frame saving must be one of {FRAME_SAVING}, got {saving!r}")
        super().__init__(root)
        self.num_frames = int(num_frames)
        self.max_frames_saved = None if max_frames_saved is None else int(max_frames_saved)
        self.saving = saving

    def exists(self, rel_path: str) -> bool:
        p = self.resolve(rel_path)
        return p.is_file() or p.is_dir()

    def load(self, rel_path: str, dataset: str | None = None, row: int | None = None,
             field: str | None = None) -> VideoClip:
        path = self.resolve(rel_path)
        where = dict(dataset=dataset, row=row, field=field)
        if path.is_dir():
            return self._load_folder(path, where)
        if not path.is_file():
            hint = f"video root is {self.root}" if self.root is not None else "no video root is set"
            raise DataError(f"video {path} not found ({hint}); download and unpack the dataset's videos or frames "
                            "under the media root, or fix the path", **where)
        return self._load_file(path, where)

    def probe(self, rel_path: str, dataset: str | None = None, row: int | None = None,
              field: str | None = None) -> tuple[int, tuple[int, int]]:
        """(frames `load` would return, (width, height) of a frame) from the folder listing and one frame header,
        or the container's header — without decoding the video (for length-sorted batching)."""
        path = self.resolve(rel_path)
        if path.is_dir():
            names = sorted((p.name for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()),
                           key=_natural_key)
            if names:
                try:
                    with Image.open(path / names[0]) as im:
                        return len(sample_indices(len(names), self.num_frames)), im.size
                except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
                    pass
        elif path.is_file():
            import av

            try:
                total, _ = self._probe(path)
                with av.open(str(path)) as container:
                    stream = container.streams.video[0]
                    size = (int(stream.codec_context.width), int(stream.codec_context.height))
                if total > 0 and size[0] > 0:
                    return len(sample_indices(total, self.num_frames, self.max_frames_saved, self.saving)), size
            except (av.FFmpegError, OSError, ValueError, EOFError, IndexError):
                pass
        clip = self.load(rel_path, dataset, row, field)  # raises the named error (or decodes a odd file)
        return len(clip), clip.frames[0].size

    # ------------------------------------------------------------------ frame folders
    def _load_folder(self, path: Path, where: dict) -> VideoClip:
        names = sorted((p.name for p in path.iterdir() if p.suffix.lower() in FRAME_EXTENSIONS and p.is_file()),
                       key=_natural_key)
        if not names:
            raise DataError(f"frame folder {path} holds no frames ({'/'.join(FRAME_EXTENSIONS)} files); extract the "
                            "video's frames there or point the row at the video file", **where)
        keep = sample_indices(len(names), self.num_frames)
        frames = []
        for i in keep:
            frame = path / names[i]
            try:
                with Image.open(frame) as im:
                    frames.append(im.convert("RGB"))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
                raise DataError(f"frame {frame} cannot be read ({type(e).__name__}: {e}); the file is corrupt or not "
                                "an image", **where) from None
        return VideoClip(tuple(frames), tuple(keep), None, len(names), str(path))

    # ------------------------------------------------------------------ video files
    def _load_file(self, path: Path, where: dict) -> VideoClip:
        import av

        def fail(e: Exception):
            return DataError(f"video file {path} cannot be decoded ({type(e).__name__}: {e}); the file is corrupt, "
                             "truncated or not a video", **where)

        try:
            total, fps = self._probe(path)
            if total == 0:
                raise DataError(f"video file {path} has no video frames; re-download or re-encode it", **where)
            keep = sample_indices(total, self.num_frames, self.max_frames_saved, self.saving)
            frames, decoded = self._decode(path, keep)
            if decoded != total:
                # The container's frame count was wrong: sample again from the frames that really decode.
                if decoded == 0:
                    raise DataError(f"video file {path} has no decodable video frames; re-download or re-encode it",
                                    **where)
                total = decoded
                keep = sample_indices(total, self.num_frames, self.max_frames_saved, self.saving)
                frames, _ = self._decode(path, keep)
        except av.FFmpegError as e:
            raise fail(e) from None
        except (OSError, ValueError, EOFError) as e:
            if isinstance(e, DataError):
                raise
            raise fail(e) from None
        return VideoClip(tuple(frames[i] for i in keep), tuple(keep), fps, total, str(path))

    @staticmethod
    def _probe(path: Path) -> tuple[int, float | None]:
        """(number of frames, frame rate): the container's count, else counted by decoding (ffprobe -count_frames)."""
        import av

        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("the file holds no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else None
            total = int(stream.frames or 0)
            if total <= 0:
                total = sum(1 for _ in container.decode(stream))
        return total, fps

    @staticmethod
    def _decode(path: Path, keep: list[int]) -> tuple[dict[int, Image.Image], int]:
        """Decode sequentially, converting only the frames in `keep`; returns them and the number decoded."""
        import av

        wanted = set(keep)
        frames, n = {}, 0
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for n, frame in enumerate(container.decode(stream), start=1):
                if n - 1 in wanted:
                    frames[n - 1] = frame.to_image().convert("RGB")
        return frames, n


def is_video_path(path: str | os.PathLike) -> bool:
    """A video file by extension, or an existing directory (a frame folder)."""
    p = Path(path)
    return p.suffix.lower() in VIDEO_EXTENSIONS or p.is_dir()
