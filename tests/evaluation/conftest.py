"""Fakes for evaluation tests: an embedder whose vectors are known in advance (a lookup table, or a
deterministic function of text, side and image), counting what each side encodes."""

from __future__ import annotations

import hashlib
import random

import pytest
import torch
from PIL import Image

from datamodules.images import ImageLoader
from datamodules.schema import Item
from embedders.prompts import PromptFormat


def text_vector(text: str, d: int = 8) -> list[float]:
    """A deterministic pseudo-random vector per string (independent of the process and of batching)."""
    seed = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") & 0x7FFF_FFFF
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)).tolist()


class FakeEmbedder(torch.nn.Module):
    """`table[text]` (or `text_vector(side + text + image flag)` for texts not in the table) as the embedding.

    `nan_texts`: texts embedded as NaN; `constant`: every item gets the same vector (a collapsed model)."""

    def __init__(self, table=None, nan_texts=(), constant=None, side_dependent=False):
        super().__init__()
        self.table = dict(table or {})
        self.calls = {"query": 0, "target": 0}
        self.encoded = {"query": [], "target": []}
        self.family = type("Family", (), {"takes_images": True, "name": "fake"})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.prompt = PromptFormat.plain()
        outer = self

        class Builder:
            def __call__(self, texts, images, side, instructions=None):
                outer.calls[side] += len(texts)
                outer.encoded[side] += list(texts)
                rows = []
                for t, im in zip(texts, images):
                    if t in nan_texts:
                        rows.append([float("nan")] * 8)
                    elif constant is not None:
                        rows.append(list(constant))
                    elif t in outer.table:
                        rows.append(outer.table[t])
                    else:
                        key = (side + "|" if side_dependent else "") + t + ("|img" if im is not None else "")
                        rows.append(text_vector(key))
                return {"v": torch.tensor(rows, dtype=torch.float32)}

        self.input_builder = Builder()

    @property
    def device(self):
        return torch.device("cpu")

    def spec(self):
        return {"family": "fake"}

    def forward(self, inputs):
        return torch.nn.functional.normalize(inputs["v"], dim=-1)


@pytest.fixture
def fake_embedder():
    return FakeEmbedder


@pytest.fixture(scope="session")
def bundled_v2_root(tmp_path_factory):
    """One bundled MMEB-V2 tree for the profile parity tests (tests/helpers/v2_parity.py), generated once."""
    return tmp_path_factory.mktemp("v2") / "bundled_v2"


#: Image sizes and words of the `items` fixture: varying image sizes give varying numbers of image tokens.
SIZES = [(40, 40), (120, 60), (200, 200), (56, 112), (300, 90)]
WORDS = "red square blue circle green triangle on the left right middle of a picture".split()


@pytest.fixture(scope="module")
def tiny():
    """The tiny Qwen2-VL with a small image budget (min 4, max 64 merged tokens per image)."""
    from embedders import Embedder

    torch.manual_seed(0)
    return Embedder.build("qwen2_vl", config={}, image={"min_pixels": 56 * 56, "max_pixels": 224 * 224})


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    """23 encode items of varied length: texts of 1-30 words, two in three with an image of one of SIZES."""
    root = tmp_path_factory.mktemp("images")
    for i, size in enumerate(SIZES):
        Image.new("RGB", size, (40 * i, 100, 200)).save(root / f"im{i}.png")
    loader = ImageLoader(root)
    g = random.Random(0)
    out = []
    for i in range(23):
        text = " ".join(g.choice(WORDS) for _ in range(g.randint(1, 30)))
        image = f"im{g.randrange(len(SIZES))}.png" if i % 3 else None
        out.append((Item(("<|image_1|>\n" if image else "") + text, image), "Set", i, "qry_img_path", loader))
    return out
