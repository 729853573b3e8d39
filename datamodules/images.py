"""Image loading relative to an image root, with errors that say which file, row and field.

The decompression-bomb limit (`image_max_pixels` in the entry points' configs) is PIL's process-wide
`Image.MAX_IMAGE_PIXELS`, set once per run with `set_max_image_pixels`. An image above it is refused with
a DataError naming the file, dataset, row and field (PIL would only warn up to twice the limit, then fail
with an error that names no file).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DataError

_UNSET = object()


def set_max_image_pixels(limit=_UNSET) -> None:
    """Images with more pixels than `limit` are refused (None: no limit). Called by the entry points."""
    if limit is _UNSET:
        return
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise TypeError(f"image_max_pixels must be a positive integer or null (no limit), got {limit!r}")
    Image.MAX_IMAGE_PIXELS = limit


def apply_image_limits(cfg) -> None:
    """Set the image-size limit of a command's config (`image_max_pixels`) for every image this process opens."""
    if "image_max_pixels" in cfg:
        set_max_image_pixels(cfg.image_max_pixels)


class MediaRoot:
    """Media paths as the data files write them: relative to `root` (None: as given), or absolute."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def resolve(self, rel_path: str) -> Path:
        p = Path(rel_path)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p


class ImageLoader(MediaRoot):
    """Opens MMEB image paths (relative to `root`) as RGB PIL images."""

    def exists(self, rel_path: str) -> bool:
        return self.resolve(rel_path).is_file()

    def load(self, rel_path: str, dataset: str | None = None, row: int | None = None, field: str | None = None):
        path = self.resolve(rel_path)
        try:
            with warnings.catch_warnings():
                # Above the limit PIL only warns (up to twice it): refuse at the limit itself.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    return im.convert("RGB")
        except FileNotFoundError:
            hint = (f"image root is {self.root}" if self.root is not None else "no image root is set")
            raise DataError(f"image file {path} not found ({hint}); unzip the dataset's images under the image "
                            "root or set data.image_root", dataset, row, field) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise DataError(f"image file {path} is larger than the image_max_pixels limit "
                            f"({Image.MAX_IMAGE_PIXELS} pixels; {e}). If the image is genuine, raise the limit, "
                            "e.g. image_max_pixels=400000000, or set it to null to remove it", dataset, row,
                            field) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"image file {path} cannot be read ({type(e).__name__}: {e}); the file is corrupt or "
                            "not an image", dataset, row, field) from None
