"""Packed sequences (`model.packed`): the decoder of a multimodal backbone runs the rows of a call concatenated into
one sequence without padding, each row attending only to itself, and its hidden states are put back at the rows'
padded positions, so that pooling, the multi-vector head and the losses see what the padded computation gives.

How: hooks around the backbone's language model (the call that its own forward makes after the visual features are
scattered into the token embeddings). The pre-hook takes the valid tokens (attention mask 1) of every row, in row
order, into `inputs_embeds` [1, N, H]; gathers the positions the same way (M-RoPE [3, B, T] → [3, 1, N], a 1-D RoPE's
[B, T] → [1, N]; Qwen3-VL's DeepStack `visual_pos_masks` [B, T] → [1, N], whose features keep their order since
visual tokens are never padding); and passes `attention_mask=None` with text positions that restart at 0 in every
row. transformers then builds the causal mask block-diagonal per row from those positions
(`masking_utils.find_packed_sequence_indices`, eager and sdpa) or runs FlashAttention's varlen kernel on them
(flash_attention_2/3); M-RoPE language models take them as the first of four position rows ([4, 1, N]). The
post-hook scatters the packed states back into a zero [B, T, H] tensor (differentiable: `index_copy`).

The visual towers and the rest of the backbone's forward run unchanged, so every module runs as in the padded call
(the FSDP uniform trace holds) and each GradCache chunk packs on its own. Costs: two host syncs per call (the
valid-token index; transformers' packed-sequence check), and the attention mask of eager/sdpa is [N, N].
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

#: Attention implementations whose packed mask transformers derives from position ids (eager/sdpa: the
#: block-diagonal causal mask; flash_attention_2/3: varlen sequence boundaries where a position is 0).
PACKED_ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3")
#: How a family's language model takes positions: `mrope` = Qwen-VL's [3, B, T] M-RoPE plus a text row, `rope` = 1-D.
POSITION_KINDS = ("mrope", "rope")


class PackingError(ValueError):
    pass


def language_model(backbone: nn.Module) -> nn.Module:
    """The decoder that a multimodal backbone's forward calls with the merged token embeddings."""
    core = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone  # LoRA: the wrapped model
    decoder = getattr(core, "language_model", None)
    if decoder is None:
        raise PackingError(f"{type(core).__name__} has no language_model to pack; model.packed needs a decoder "
                           "backbone (qwen2_vl, qwen3_vl, llava_onevision)")
    return decoder


def check_attention(decoder: nn.Module, family: str) -> str:
    """Refuse an attention implementation for which transformers does not isolate packed rows; return the one in use."""
    impl = getattr(decoder.config, "_attn_implementation", None)
    if impl not in PACKED_ATTENTION:
        raise PackingError(f"model.packed=true needs the language model's attention implementation to be one of "
                           f"{', '.join(PACKED_ATTENTION)} (transformers isolates packed rows only there), but this "
                           f"{family} backbone uses {impl!r}: load it with one of those (attn_implementation) or set "
                           "model.packed=false")
    return impl


def dense_mask_warning(impl: str) -> str | None:
    """Why packing may cost time with `impl`: eager and sdpa attend over all N x N token pairs of the packed call
    (masked) where the padded call attends over B x T x T; only FlashAttention's varlen kernel skips the other rows."""
    if impl.startswith("flash_attention"):
        return None
    return (f"model.packed=true with attention implementation {impl!r}: the rows are isolated by an [N, N] mask over "
            "all N tokens of a call, so attention costs grow with N^2 (more than the padded B*T^2 once rows are long; "
            "only the MLPs and projections skip the padding). The throughput path is flash_attention_2 (varlen)")


def pack_index(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat indices [N] of the valid tokens of `mask` [B, T] in row order, and their text positions [N]
    (0, 1, … within each row: the per-row restart that isolates the rows)."""
    flat = mask.reshape(-1).bool()
    index = flat.nonzero().squeeze(1)  # host sync: N is data-dependent
    text = (mask.long().cumsum(-1) - 1).reshape(-1).index_select(0, index)
    return index, text


def packed_positions(position_ids: torch.Tensor | None, index: torch.Tensor, text: torch.Tensor, kind: str,
                     batch: int, length: int) -> torch.Tensor:
    """The language model's `position_ids` for the packed sequence: [4, 1, N] (text row, then M-RoPE's three) for
    `mrope`, [1, N] for `rope`. Given positions are gathered at `index`; none given = the text positions."""
    if kind == "mrope":
        if position_ids is None:
            rope = text.unsqueeze(0).expand(3, -1)
        elif position_ids.ndim == 3:  # [3, B, T], or [4, B, T] whose own text row is replaced
            rope = position_ids[-3:].reshape(3, batch * length).index_select(1, index)
        else:  # [B, T]: the same position on the three axes
            rope = position_ids.reshape(-1).index_select(0, index).unsqueeze(0).expand(3, -1)
        return torch.cat([text.unsqueeze(0), rope.to(text.dtype)]).unsqueeze(1)
    if kind == "rope":
        if position_ids is None:
            return text.unsqueeze(0)
        if position_ids.ndim != 2:
            raise PackingError(f"a 1-D RoPE language model got position_ids of shape {tuple(position_ids.shape)}")
        return position_ids.reshape(-1).index_select(0, index).unsqueeze(0)
    raise PackingError(f"unknown position kind {kind!r}; one of {POSITION_KINDS}")


@contextmanager
def packed_sequences(backbone: nn.Module, kind: str, family: str = ""):
    """Within this scope, every call of `backbone`'s language model runs its rows packed (see the module doc)."""
    decoder = language_model(backbone)
    check_attention(decoder, family or type(backbone).__name__)
    calls: list[tuple[torch.Tensor, int, int]] = []

    def pack(module, args, kwargs):
        if args:
            raise PackingError(f"{type(module).__name__} was called with positional arguments; packing reads keywords")
        kwargs = dict(kwargs)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            embeds = module.get_input_embeddings()(kwargs["input_ids"])
        kwargs["input_ids"] = None
        batch, length, width = embeds.shape
        mask = kwargs.get("attention_mask")
        if isinstance(mask, dict) or (mask is not None and mask.ndim != 2):
            raise PackingError("packing needs the [B, T] padding mask, got a prepared attention mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        index, text = pack_index(mask)
        kwargs["inputs_embeds"] = embeds.reshape(batch * length, width).index_select(0, index).unsqueeze(0)
        kwargs["position_ids"] = packed_positions(kwargs.get("position_ids"), index, text, kind, batch, length)
        kwargs["attention_mask"] = None
        kwargs["use_cache"] = False
        visual = kwargs.get("visual_pos_masks")
        if visual is not None:  # DeepStack: the same tokens, in the same (row-major) order
            kwargs["visual_pos_masks"] = visual.reshape(-1).index_select(0, index.to(visual.device)).unsqueeze(0)
        calls.append((index, batch, length))
        return (), kwargs

    def unpack(module, args, kwargs, output):
        index, batch, length = calls.pop()
        packed = output.last_hidden_state[0]
        hidden = packed.new_zeros(batch * length, packed.shape[-1]).index_copy(0, index, packed)
        output.last_hidden_state = hidden.view(batch, length, -1)
        return output

    hooks = [decoder.register_forward_pre_hook(pack, with_kwargs=True),
             decoder.register_forward_hook(unpack, with_kwargs=True)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
