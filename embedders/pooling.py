"""Pooling of token states into one vector per row (METHODS §4).

Every function takes hidden states [B, T, H] and the attention mask [B, T] and works for left
and right padding alike: positions are derived from the mask, never assumed.
"""

from __future__ import annotations

import torch

POOLING_MODES = ("last", "mean", "cls", "multi_vector")
#: Not a pooling to one vector: every token state is kept (padding zeroed) for the multi-vector head
#: (`embedders/multi_vector.py`), which projects and normalises them.
MULTI_VECTOR = "multi_vector"


def last_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's last non-padding token (index of the last 1 in the mask)."""
    mask = attention_mask.to(torch.long)
    t = mask.shape[1]
    # argmax returns the first maximum: flipping finds the last 1 whatever the padding side.
    last = t - 1 - mask.flip(dims=[1]).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def first_token_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of each row's first non-padding token (CLS for encoders)."""
    first = attention_mask.to(torch.long).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), first]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the non-padding token states."""
    m = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


def token_states(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Every token's hidden state [B, T, H], padding positions zeroed (the multi-vector head's input)."""
    return hidden * attention_mask.to(hidden.dtype).unsqueeze(-1)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "last":
        return last_token_pool(hidden, attention_mask)
    if mode == "mean":
        return mean_pool(hidden, attention_mask)
    if mode == "cls":
        return first_token_pool(hidden, attention_mask)
    if mode == MULTI_VECTOR:
        return token_states(hidden, attention_mask)
    raise ValueError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")
