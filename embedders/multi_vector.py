"""The multi-vector (late-interaction) head: one vector per token, ColPali-style (METHODS §10).

The backbone's last hidden states go through a small linear projection (`dim`, 128 as ColPali/ColQwen2), each
token vector is L2-normalised, and tokens that are not scored (padding, and optionally the tokens named in
`skip_tokens`, e.g. the chat template's markers) are zeroed.

The representation every room shares (losses, evaluation, shipping): a float tensor [B, L, dim] whose all-zero rows
are "no token" — sentence-transformers' convention for padded multi-vector tensors (`_zero_row_mask`). A unit
vector is never all-zero, so the tensors carry their own masks through concatenation, padding, gathering and
caching, and every loss keeps its one call signature.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

#: Late-interaction similarities: MaxSim (sum over query tokens of the best document token) and its mean over the
#: query's tokens (`meanmaxsim`), as sentence-transformers names them (`similarity_fn_name`).
SIMILARITIES = ("maxsim", "meanmaxsim")
#: `skip_tokens: special` masks the tokenizer's special tokens except these (the page/frame patches are the document).
KEPT_SPECIAL_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<image>", "<video>", "<|image_1|>")
HEAD_KEYS = ("dim", "similarity", "skip_tokens", "bias")


def scored_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: the rows of a [B, L, d] multi-vector tensor that are tokens (not all-zero)."""
    return x.ne(0).any(dim=-1)


def cat_padded(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate [n_i, d] (plain `cat`) or [n_i, L_i, d] tensors along rows, padding the token axis with zero rows
    to the largest L_i (differentiable)."""
    parts = list(parts)
    if not parts:
        raise ValueError("nothing to concatenate")
    if parts[0].ndim != 3:
        return torch.cat(parts)
    width = max(p.shape[1] for p in parts)
    return torch.cat([pad_tokens(p, width) for p in parts])


def pad_tokens(x: torch.Tensor, width: int) -> torch.Tensor:
    """[n, L, d] → [n, width, d] with zero rows appended (width ≥ L; differentiable)."""
    if x.shape[1] == width:
        return x
    if x.shape[1] > width:
        raise ValueError(f"cannot pad {x.shape[1]} tokens to {width}")
    return nn.functional.pad(x, (0, 0, 0, width - x.shape[1]))


def trim_tokens(x: torch.Tensor) -> torch.Tensor:
    """Drop trailing token positions that are zero in every row (padding shared by the whole batch)."""
    if x.ndim != 3 or x.shape[1] == 0:
        return x
    used = scored_tokens(x).any(dim=0).nonzero()
    width = int(used.max()) + 1 if used.numel() else 1
    return x[:, :width]


def compact_tokens(x: torch.Tensor) -> torch.Tensor:
    """Move every row's tokens to the front (stable) and trim: the same vectors, least padding. Scores are
    unchanged (MaxSim does not depend on token order)."""
    if x.ndim != 3:
        return x
    keep = scored_tokens(x)
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    return trim_tokens(torch.gather(x, 1, order.unsqueeze(-1).expand_as(x)))


def pooled_proxy(x: torch.Tensor) -> torch.Tensor:
    """One vector per item: [N, L, d] token vectors → the L2-normalised mean of each item's tokens [N, d] ([N, d]
    unchanged). What mining ranks a multi-vector model's items by (docs/late_interaction.md)."""
    if x.ndim != 3:
        return x
    mask = scored_tokens(x).unsqueeze(-1).to(x.dtype)
    return nn.functional.normalize((x * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1), dim=-1)


def resolve_skip_ids(tokenizer, skip_tokens) -> list[int]:
    """Token ids of `skip_tokens`: a list of token strings, or `special` (the tokenizer's special tokens except the
    image/video tokens and the unknown token). A string that is not one vocabulary token is refused by name."""
    if skip_tokens is None:
        return []
    if isinstance(skip_tokens, str):
        if skip_tokens != "special":
            raise ValueError(f"model.multi_vector.skip_tokens must be a list of tokens or 'special', got {skip_tokens!r}")
        if tokenizer is None:
            raise ValueError("model.multi_vector.skip_tokens=special needs a tokenizer")
        names = [t for t in dict.fromkeys(tokenizer.all_special_tokens) if t not in KEPT_SPECIAL_TOKENS]
        # The chat markers of Qwen-style tokenizers are added tokens flagged special.
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        names += [str(t) for t in added.values() if getattr(t, "special", False) and str(t) not in KEPT_SPECIAL_TOKENS]
        # The unknown token stands for content words (an out-of-vocabulary word is still text to match).
        skip_tokens = [t for t in dict.fromkeys(names) if t != getattr(tokenizer, "unk_token", None)]
    ids = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for token in skip_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token) if tokenizer is not None else None
        if token_id is None or (token_id == unk and token != getattr(tokenizer, "unk_token", None)):
            raise ValueError(f"model.multi_vector.skip_tokens: {token!r} is not a single token of this tokenizer; "
                             "list tokens as the tokenizer spells them (e.g. '<|im_start|>')")
        ids.append(int(token_id))
    return sorted(set(ids))


class MultiVectorHead(nn.Module):
    """Projection [.., H] → [.., dim], per-token L2 normalisation, unscored tokens zeroed."""

    def __init__(self, hidden_size: int, dim: int = 128, similarity: str = "maxsim",
                 skip_token_ids: Sequence[int] = (), bias: bool = True):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"model.multi_vector.dim must be a positive integer, got {dim!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"model.multi_vector.similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.proj = nn.Linear(int(hidden_size), dim, bias=bool(bias))
        self.similarity = similarity
        self.register_buffer("skip_ids", torch.tensor(sorted(set(skip_token_ids)), dtype=torch.long),
                             persistent=False)

    @property
    def dim(self) -> int:
        return self.proj.out_features

    def scoring_mask(self, attention_mask: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
        keep = attention_mask.bool()
        if self.skip_ids.numel() and input_ids is not None:
            keep = keep & ~torch.isin(input_ids, self.skip_ids.to(input_ids.device))
        return keep

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
                truncate_dim: int | None = None) -> torch.Tensor:
        out = self.proj(states.to(self.proj.weight.dtype))
        if truncate_dim is not None:
            if truncate_dim > out.shape[-1]:
                raise ValueError(f"truncate_dim={truncate_dim} exceeds the token dimension {out.shape[-1]} of this "
                                 "multi-vector head; use a value ≤ it or null")
            out = out[..., :truncate_dim]  # Matryoshka on the token dimension: prefixes re-normalised below
        out = nn.functional.normalize(out, dim=-1)
        return out * self.scoring_mask(attention_mask, input_ids).unsqueeze(-1).to(out.dtype)


def head_config(config: Mapping | None) -> dict:
    """`model.multi_vector` with its defaults, unknown keys refused."""
    config = dict(config or {})
    unknown = set(config) - set(HEAD_KEYS)
    if unknown:
        raise ValueError(f"model.multi_vector has unknown key(s) {sorted(unknown)}; known: {list(HEAD_KEYS)}")
    out = {"dim": 128, "similarity": "maxsim", "skip_tokens": None, "bias": True}
    out.update({k: v for k, v in config.items() if v is not None or k == "skip_tokens"})
    if isinstance(out["skip_tokens"], (list, tuple)):
        out["skip_tokens"] = [str(t) for t in out["skip_tokens"]]
    return out
