"""Losses and similarities under autocast: Lightning's `bf16-mixed` runs every step inside
`torch.autocast`, so whatever the tests prove in fp32 must hold there too. On CPU,
`torch.autocast("cpu", dtype=torch.bfloat16)` applies the same casting rules as on GPUs."""

from __future__ import annotations

import pytest
import torch

from losses import HardnessWeightedInfoNCE, InfoNCE, similarity_fp32

B, M, D = 48, 6, 64


def _embeddings(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(B, D, generator=g), dim=-1)
    # positives close to their queries: logits at τ 0.02 land between 32 and 50, where bf16 steps are 0.25
    t = torch.nn.functional.normalize(torch.cat([q + 0.3 * torch.randn(B, D, generator=g),
                                                 torch.randn(M, D, generator=g)]), dim=-1)
    keys = torch.arange(B + M)
    keys[7] = keys[3]  # two identical targets: a masked false negative
    return q, t, keys


LOSSES = {
    "infonce": lambda: InfoNCE(temperature=0.02),
    "infonce_symmetric": lambda: InfoNCE(temperature=0.02, symmetric=True),
    "hardness_weighted": lambda: HardnessWeightedInfoNCE(temperature=0.02, alpha=9.0),
    "hardness_learnable_tau": lambda: HardnessWeightedInfoNCE(temperature=0.05, alpha=0.5, learnable_temperature=True),
}


def _loss_and_grads(make, autocast: bool):
    torch.manual_seed(0)
    loss_fn = make()
    q, t, keys = _embeddings()
    q.requires_grad_()
    t.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(q, t, keys)
    loss.backward()
    grads = [q.grad, t.grad] + [p.grad for p in loss_fn.parameters()]
    return loss.detach(), grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_and_gradients_under_bf16_autocast_equal_fp32(name):
    ref_loss, ref_grads = _loss_and_grads(LOSSES[name], autocast=False)
    loss, grads = _loss_and_grads(LOSSES[name], autocast=True)
    assert loss.dtype == torch.float32
    assert _rel(loss, ref_loss) <= 1e-6
    assert len(grads) == len(ref_grads)
    for g, ref in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        assert _rel(g, ref) <= 1e-6


def test_the_check_can_fail_a_bf16_similarity_moves_the_loss():
    """Negative control: the same loss fed bf16-rounded logits (what autocast did before) is off by far more."""
    q, t, keys = _embeddings()
    ref = InfoNCE(temperature=0.02)(q, t, keys)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sim_bf16 = q @ t.T
    assert sim_bf16.dtype == torch.bfloat16
    logits = sim_bf16.float() / 0.02
    mask = (keys[:B, None] == keys[None, :]) & ~torch.eye(B, B + M, dtype=torch.bool)
    rounded = torch.nn.functional.cross_entropy(logits.masked_fill(mask, float("-inf")), torch.arange(B))
    assert _rel(rounded, ref) > 1e-4


def test_bf16_embeddings_get_bf16_gradients_and_fp32_logits():
    q, t, keys = _embeddings()
    qb, tb = q.bfloat16().requires_grad_(), t.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = InfoNCE(temperature=0.02, symmetric=True)(qb, tb, keys)
    loss.backward()
    assert loss.dtype == torch.float32 and qb.grad.dtype == torch.bfloat16 and tb.grad.dtype == torch.bfloat16
    # the loss equals the fp32 loss of the bf16-rounded embeddings: only the inputs were rounded
    ref = InfoNCE(temperature=0.02, symmetric=True)(qb.detach().float(), tb.detach().float(), keys)
    assert _rel(loss.detach(), ref) <= 1e-6


def test_similarity_fp32_under_autocast():
    q, t, _ = _embeddings()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = similarity_fp32(q, t)
        s_bf16_inputs = similarity_fp32(q.bfloat16(), t.bfloat16())
    assert s.dtype == torch.float32 and s_bf16_inputs.dtype == torch.float32
    assert torch.equal(s, q @ t.T)
    assert torch.equal(s_bf16_inputs, q.bfloat16().float() @ t.bfloat16().float().T)
    assert similarity_fp32(q.double(), t.double()).dtype == torch.float64


def test_validation_similarities_are_fp32_under_autocast():
    """The module's validation step under bf16 autocast records the fp32 similarities of its embeddings."""
    from embedders import EmbeddingModule

    module = EmbeddingModule(family="qwen2_vl", config={}, loss=InfoNCE(temperature=0.02))
    q, t, keys = _embeddings()
    t = t[:B]  # validation targets: the positives
    module.embed_chunks = lambda chunks: chunks[0]
    module.on_validation_epoch_start()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module.validation_step({"query": [q], "target": [t], "target_keys": torch.arange(B), "num_pairs": B}, 0)
    (_, pos), (_, neg) = module._val_pos[0], module._val_neg[0]
    sim = q @ t.T
    assert pos.dtype == torch.float32 and torch.equal(pos, sim.diagonal())
    assert neg.dtype == torch.float32 and torch.equal(neg, sim[~torch.eye(B, dtype=torch.bool)])
    assert float(module._val_sums[0] / B) == pytest.approx(float(InfoNCE(temperature=0.02)(q, t)), rel=1e-6)
