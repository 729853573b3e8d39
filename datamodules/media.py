"""The visual input of an item, loaded relative to one media root: None, an RGB image, a list of page images, or
a sampled `VideoClip` — exactly the per-row visual input the families' `prepare` takes. Errors name the file,
dataset, row and field (`ImageLoader`, `VideoLoader`)."""

from __future__ import annotations

import os

from .errors import DataError
from .images import ImageLoader
from .schema import Item
from .video import VideoLoader


class MediaLoader(ImageLoader):
    """An `ImageLoader` that also opens videos (files or frame folders, sampled to `num_frames` as the reference
    does, `datamodules/video.py`) and page lists, all relative to the same `root`."""

    def __init__(self, root: str | os.PathLike | None, num_frames: int = 8, max_frames_saved: int | None = 64,
                 frame_saving: str = "spread"):
        super().__init__(root)
        self.videos = VideoLoader(root, num_frames, max_frames_saved, frame_saving)

    @property
    def num_frames(self) -> int:
        return self.videos.num_frames

    @property
    def max_frames_saved(self) -> int | None:
        return self.videos.max_frames_saved

    def load_visual(self, item: Item, dataset: str | None = None, row: int | None = None, field: str | None = None):
        if item.video:
            return self.videos.load(item.video, dataset, row, field)
        if item.pages:
            return [self.load(p, dataset, row, field) for p in item.pages]
        if item.image:
            return self.load(item.image, dataset, row, field)
        return None

    def paths(self, item: Item) -> list[str]:
        """Every file (or frame folder) the item reads."""
        return [p for p in (item.image, item.video, *item.pages) if p]


def load_visual(loader: ImageLoader, item: Item, dataset: str | None = None, row: int | None = None,
                field: str | None = None):
    """`loader.load_visual(...)` for a `MediaLoader`; a plain `ImageLoader` opens images and pages only."""
    if isinstance(loader, MediaLoader):
        return loader.load_visual(item, dataset, row, field)
    if item.video:
        raise DataError(f"item has a video ({item.video}) but its loader opens images only; read the dataset with "
                        "a MediaLoader (a V2 suite or a video training subset)", dataset, row, field)
    if item.pages:
        return [loader.load(p, dataset, row, field) for p in item.pages]
    return loader.load(item.image, dataset, row, field) if item.image else None
