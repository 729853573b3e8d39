"""GradCache chunks cut from rows grouped by length, within a padded-token budget (data.group_by_length,
data.max_tokens_per_batch): every row once, chunks within the budget, the exact token counts the processor gives,
and the module's loss and gradients equal to the plain step on the same rows in row order (the loss does not depend
on the order in which rows are embedded)."""

from __future__ import annotations

import random

import pytest
import torch
from PIL import Image

from datamodules.collate import PairCollator, grouped_chunks
from datamodules.images import ImageLoader
from datamodules.schema import Item, TrainPair
from embedders import EmbeddingModule
from embedders.module import in_row_order
from losses import InfoNCE

WORDS = "red green blue yellow circle square triangle left right middle small large".split()


def test_grouped_chunks_keep_every_row_once_within_the_budget():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.randint(1, 60) for _ in range(rng.randint(1, 40))]
        chunk = rng.choice([None, 1, 3, 8])
        budget = rng.choice([None, 40, 100, 400])
        order, bounds = grouped_chunks(lengths, chunk, budget)
        assert sorted(order) == list(range(len(lengths)))  # every row once
        assert [lengths[i] for i in order] == sorted(lengths, reverse=True)  # longest first
        assert bounds[0][0] == 0 and bounds[-1][1] == len(lengths)
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))  # contiguous
        for s, e in bounds:
            rows, longest = e - s, lengths[order[s]]
            assert chunk is None or rows <= chunk
            assert budget is None or rows * longest <= budget or rows == 1  # a row over the budget alone
            # a chunk stops only when the next row would break a limit (or at the end)
            if e < len(lengths):
                assert (chunk is not None and rows == chunk) or (budget is not None and (rows + 1) * longest > budget)


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return EmbeddingModule(family="qwen2_vl", config={}, image={"min_pixels": 56 * 56, "max_pixels": 112 * 112},
                           gradcache={"chunk_size": 3}, loss=InfoNCE(temperature=0.05, symmetric=True),
                           optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.0}, scheduler=None)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouping")
    rng = random.Random(1)
    out = []
    for i in range(8):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 25)))
        image = None
        if i % 3 == 0:  # images of other sizes: other image-token counts
            image = f"{i}.png"
            Image.new("RGB", (56 + 28 * (i % 4), 56 + 14 * i), WORDS[i % 4]).save(root / image)
        query = Item(f"<|image_1|>\n{text}" if image else text, image)
        positive = Item(" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))))
        negatives = (Item("a " + " ".join(WORDS[: 2 + i])),) if i % 2 else ()
        out.append(TrainPair("S", i, query, positive, negatives))
    return root, out


def test_token_counts_equal_what_the_processor_gives(module, pairs):
    root, rows = pairs
    builder, loader = module.embedder.input_builder, ImageLoader(root)
    texts = [p.query.text for p in rows]
    images = [loader.load(p.query.image) if p.query.image else None for p in rows]
    counts = builder.token_counts(texts, images, "query")
    for text, image, n in zip(texts, images, counts):
        assert builder([text], [image], "query")["attention_mask"].sum().item() == n


def test_budgeted_chunks_and_the_step_equal_the_plain_step(module, pairs):
    root, rows = pairs
    grouped = PairCollator(module.embedder.input_builder, ImageLoader(root), chunk_size=3, max_tokens_per_chunk=120)
    plain = PairCollator(module.embedder.input_builder, ImageLoader(root), chunk_size=None)
    batch, whole = grouped(rows), plain(rows)
    assert "query_order" in batch and sorted(batch["query_order"].tolist()) == list(range(len(rows)))
    for side in ("query", "target"):
        for chunk in batch[side]:
            mask = chunk["attention_mask"]
            assert mask.shape[0] <= 3 and (mask.numel() <= 120 or mask.shape[0] == 1)
    # The same embeddings in row order as one plain forward (dropout off: eval mode).
    module.embedder.eval()
    q = in_row_order(torch.cat([module.embedder(c) for c in batch["query"]]), batch["query_order"])
    torch.testing.assert_close(q, module.embedder(whole["query"][0]), rtol=1e-5, atol=1e-5)

    # Loss and gradients of the GradCache step on the grouped chunks = the plain step on the whole batch.
    def grads_of(step):
        module.zero_grad(set_to_none=True)
        loss = step()
        return float(loss), {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    def plain_step():
        loss = module.loss(module.embed_chunks(whole["query"]), module.embed_chunks(whole["target"]),
                           whole["target_keys"])
        loss.backward()
        return loss

    def cached_step():
        q_chunks = [module.embedder(c) for c in batch["query"]]
        t_chunks = [module.embedder(c) for c in batch["target"]]
        q_leaf = torch.cat(q_chunks).detach().requires_grad_()
        t_leaf = torch.cat(t_chunks).detach().requires_grad_()
        loss = module.loss(in_row_order(q_leaf, batch.get("query_order")),
                           in_row_order(t_leaf, batch.get("target_order")), batch["target_keys"])
        loss.backward()
        for chunks, leaf in ((batch["query"], q_leaf), (batch["target"], t_leaf)):
            offset = 0
            for c in chunks:
                emb = module.embedder(c)
                emb.backward(leaf.grad[offset : offset + emb.shape[0]])
                offset += emb.shape[0]
        return loss

    a_loss, a = grads_of(plain_step)
    b_loss, b = grads_of(cached_step)
    assert b_loss == pytest.approx(a_loss, rel=1e-5)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_token_budget_needs_gradcache(compose_cfg):
    from training.checks import validate_config

    with pytest.raises(ValueError, match="data.max_tokens_per_batch=512 bounds the tokens of one forward pass"):
        validate_config(compose_cfg("train", ["data.max_tokens_per_batch=512"]))
    validate_config(compose_cfg("train", ["data.max_tokens_per_batch=512", "model.gradcache.chunk_size=8"]))
