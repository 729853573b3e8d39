"""Pooling with left and right padding against hand-picked positions."""

from __future__ import annotations

import pytest
import torch

from embedders.pooling import first_token_pool, last_token_pool, mean_pool, pool


def _hidden(b=3, t=5, h=4):
    return torch.arange(b * t * h, dtype=torch.float32).reshape(b, t, h)


def test_last_token_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    h = _hidden()
    out = last_token_pool(h, mask)
    assert torch.equal(out, torch.stack([h[0, 2], h[1, 4], h[2, 0]]))


def test_last_token_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    h = _hidden()
    assert torch.equal(last_token_pool(h, mask), h[:, -1])


def test_first_token_both_paddings():
    h = _hidden()
    right = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 0, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert torch.equal(first_token_pool(h, right), h[:, 0])
    assert torch.equal(first_token_pool(h, left), torch.stack([h[0, 3], h[1, 0], h[2, 4]]))


@pytest.mark.parametrize("left", [False, True])
def test_mean_ignores_padding(left):
    h = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    if left:
        mask = mask.flip(1)
    expected = torch.stack([h[i][mask[i].bool()].mean(0) for i in range(2)])
    assert torch.allclose(mean_pool(h, mask), expected)


def test_unknown_mode():
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(_hidden(), torch.ones(3, 5), "max")
