"""Tiny tokenizers for randomly initialised backbones of the real architectures.

No pretrained weights are reachable offline, so tests and the default run use real model
classes built from small configs. Their tokenizer is a word-level vocabulary (the words of the
bundled dataset and of MMEB instructions, `assets/tiny_vocab.txt`) with the family's special
tokens, so every real code path (image token expansion, padding, chat layout) is exercised.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

VOCAB_FILE = Path(__file__).parent / "assets" / "tiny_vocab.txt"

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@lru_cache(maxsize=1)
def tiny_words() -> tuple[str, ...]:
    words = [w.strip() for w in VOCAB_FILE.read_text(encoding="utf-8").splitlines()]
    return tuple(dict.fromkeys(w for w in words if w))


def _word_level(specials: tuple[str, ...], unk: str) -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate((unk, *[s for s in specials if s != unk]))}
    for w in tiny_words():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def tiny_qwen_tokenizer(extra_special_tokens: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """Word-level tokenizer with Qwen's special tokens (plus `extra_special_tokens`); pads on the left."""
    specials = (*QWEN_SPECIAL_TOKENS, *extra_special_tokens)
    return PreTrainedTokenizerFast(
        tokenizer_object=_word_level(specials, "<unk>"),
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=list(specials[1:]),
        padding_side="left",
    )


def tiny_bert_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer with BERT's special tokens and a [CLS] … [SEP] template."""
    raw = _with_template(_word_level(BERT_SPECIAL_TOKENS, "[UNK]"), "[CLS] $A [SEP]", ("[CLS]", "[SEP]"),
                         pair="[CLS] $A [SEP] $B [SEP]")
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        padding_side="right",
    )


def tiny_llava_qwen_tokenizer() -> PreTrainedTokenizerFast:
    """LLaVA-OneVision's Qwen2 tokenizer: the Qwen tokens plus the `<image>`/`<video>` placeholders."""
    return tiny_qwen_tokenizer(("<image>", "<video>"))


def _with_template(raw: Tokenizer, single: str, specials: tuple[str, ...], pair: str | None = None) -> Tokenizer:
    from tokenizers.processors import TemplateProcessing

    raw.post_processor = TemplateProcessing(single=single, pair=pair,
                                            special_tokens=[(s, raw.token_to_id(s)) for s in specials])
    return raw


def tiny_clip_tokenizer(model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """Word-level tokenizer laid out like CLIP's: `<|startoftext|> … <|endoftext|>`, padded (right) with
    `<|endoftext|>`. The end-of-text id is deliberately not 2: CLIP configs with eos_token_id 2 take the legacy
    "argmax of input_ids" pooling, which only works with CLIP's own vocabulary order."""
    raw = _with_template(_word_level(("<|endoftext|>", "<|startoftext|>"), "<unk>"),
                         "<|startoftext|> $A <|endoftext|>", ("<|startoftext|>", "<|endoftext|>"))
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=model_max_length,
    )


def tiny_siglip_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """Word-level tokenizer laid out like SigLIP's: `… </s>`, padded (right) with `</s>`, no BOS."""
    raw = _with_template(_word_level(("</s>",), "<unk>"), "$A </s>", ("</s>",))
    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="<unk>",
        eos_token="</s>",
        pad_token="</s>",
        padding_side="right",
        model_max_length=model_max_length,
    )
