"""Token-budget batches in evaluation (`eval.max_tokens_per_batch`): the batching rule against a naive
definition, exact token counts before decoding (equal to the processor's), every batch within the budget on the
tiny Qwen2-VL with images of several sizes, the same embeddings as fixed-size batches, over-budget items
encoded alone and counted, and a clear refusal where the tokens cannot be known before decoding."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from evaluation.encoding import encode_unique, measure_lengths, token_budget_batches


def naive_batches(tokens, budget, rows):
    """The definition, written out: walk the rows in order; a row joins the open batch when the batch with it
    still has at most `rows` rows and (rows × its longest row) ≤ `budget`; otherwise it opens a new batch."""
    out = []
    for i in range(len(tokens)):
        if out:
            trial = out[-1] + [i]
            if len(trial) <= rows and len(trial) * max(tokens[j] for j in trial) <= budget:
                out[-1] = trial
                continue
        out.append([i])
    return out


def test_token_budget_batches_equal_the_naive_definition():
    g = random.Random(0)
    for _ in range(300):
        tokens = [g.randint(1, 60) for _ in range(g.randint(0, 40))]
        if g.random() < 0.5:
            tokens.sort(reverse=True)
        budget, rows = g.randint(1, 200), g.randint(1, 9)
        got = token_budget_batches(tokens, budget, rows)
        assert got == naive_batches(tokens, budget, rows)
        assert [i for b in got for i in b] == list(range(len(tokens)))
        for b in got:
            assert len(b) <= rows
            assert len(b) == 1 or len(b) * max(tokens[i] for i in b) <= budget
    assert token_budget_batches([10, 8, 8, 3, 3, 3], 24, 8) == [[0, 1], [2, 3, 4], [5]]  # hand-worked
    with pytest.raises(ValueError, match="positive"):
        token_budget_batches([1], 0, 4)


def test_exact_token_counts_equal_the_processors(tiny, items):
    for side in ("query", "target"):
        _, tokens = measure_lengths(items, tiny.input_builder, side, exact_tokens=True)
        processor = []
        for item, _, _, _, loader in items:
            image = loader.load(item.image) if item.image else None
            processor.append(int(tiny.input_builder([item.text], [image], side)["attention_mask"].sum()))
        assert tokens == processor


@pytest.mark.parametrize("sort", [True, False])
def test_budget_batches_stay_within_the_budget_and_embed_the_same(tiny, items, sort):
    plain = encode_unique(tiny, items, "query", 4, sort=sort)
    budget = 160
    stats: dict = {}
    got = encode_unique(tiny, items, "query", 8, sort=sort, max_tokens=budget, stats=stats)
    assert torch.allclose(got, plain, atol=1e-5)  # same items, other batch neighbours
    _, tokens = measure_lengths(items, tiny.input_builder, "query", exact_tokens=True)
    assert max(tokens) <= budget  # every item fits: the budget binds every batch
    assert stats["items"] == len(items) and "over_budget" not in stats
    assert stats["max_batch_positions"] <= budget
    assert stats["batches"] > -(-len(items) // 8)  # the budget, not the row cap, cut the batches


def test_over_budget_items_are_encoded_alone_and_counted(tiny, items, caplog):
    stats: dict = {}
    got = encode_unique(tiny, items, "query", 8, max_tokens=1, stats=stats)
    _, tokens = measure_lengths(items, tiny.input_builder, "query", exact_tokens=True)
    assert stats["batches"] == len(items)  # every item alone: no two fit in one token
    assert stats["over_budget"] == sum(n > 1 for n in tokens) >= len(items) - 2
    assert torch.allclose(got, encode_unique(tiny, items, "query", 1), atol=1e-5)
    assert "longer than eval.max_tokens_per_batch=1" in caplog.text


def test_a_budget_is_refused_where_image_tokens_are_unknown_before_decoding(items):
    class Tokenizer:
        def __call__(self, texts, **kwargs):
            return {"input_ids": [t.split() for t in texts]}

        def convert_tokens_to_ids(self, token):
            return 0

    processor = SimpleNamespace(tokenizer=Tokenizer(), image_processor=SimpleNamespace())  # no patch count
    embedder = SimpleNamespace(input_builder=SimpleNamespace(processor=processor, max_length=64))
    with pytest.raises(ValueError, match=r"max_tokens_per_batch=64.*Qwen-style"):
        encode_unique(embedder, items, "query", 4, max_tokens=64)
