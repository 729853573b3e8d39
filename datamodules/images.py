"""Image loading relative to an image root, with errors that say which file, row and field."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .errors import DataError


class ImageLoader:
    """Opens MMEB image paths (relative to `root`) as RGB PIL images."""

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def resolve(self, rel_path: str) -> Path:
        p = Path(rel_path)
        if p.is_absolute() or self.root is None:
            return p
        return self.root / p

    def exists(self, rel_path: str) -> bool:
        return self.resolve(rel_path).is_file()

    def load(self, rel_path: str, dataset: str | None = None, row: int | None = None, field: str | None = None):
        path = self.resolve(rel_path)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            hint = (f"image root is {self.root}" if self.root is not None else "no image root is set")
            raise DataError(f"image file {path} not found ({hint}); unzip the dataset's images under the image "
                            "root or set data.image_root", dataset, row, field) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise DataError(f"image file {path} cannot be read ({type(e).__name__}: {e}); the file is corrupt or "
                            "not an image", dataset, row, field) from None
