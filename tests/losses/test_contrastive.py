"""InfoNCE and hardness-weighted InfoNCE against naive per-row loops and hand-worked values."""

from __future__ import annotations

import math

import pytest
import torch

from losses import HardnessWeightedInfoNCE, InfoNCE


def _normed(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def naive_loss(q, t, keys=None, tau=0.02, alpha=0.0, symmetric=False):
    """Per-row loop straight from METHODS §2.1/§2.2 with Python floats."""
    b = q.shape[0]
    q, t = q.tolist(), t.tolist()
    keys = keys.tolist() if keys is not None else list(range(len(t)))

    def dot(a, c):
        return sum(x * y for x, y in zip(a, c))

    def row_loss(anchor, columns, col_keys, label, label_key):
        s_pos = dot(anchor, columns[label])
        denom = math.exp(s_pos / tau)
        for j, col in enumerate(columns):
            if j == label or col_keys[j] == label_key:
                continue  # the positive itself, or an identical copy of it (masked)
            s = dot(anchor, col)
            denom += math.exp(alpha * s) * math.exp(s / tau)
        return -(s_pos / tau - math.log(denom))

    forward = [row_loss(q[i], t, keys, i, keys[i]) for i in range(b)]
    if not symmetric:
        return sum(forward) / b
    q_keys = keys[:b]  # query k "is" the target it is paired with
    backward = [row_loss(t[i], q, q_keys, i, keys[i]) for i in range(b)]
    return sum(0.5 * (f + r) for f, r in zip(forward, backward)) / b


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [0, 3])
def test_infonce_matches_naive_loop(symmetric, negatives):
    q, t = _normed(6, 16, 0), _normed(6 + negatives, 16, 1)
    got = InfoNCE(temperature=0.05, symmetric=symmetric)(q, t)
    assert got.item() == pytest.approx(naive_loss(q, t, tau=0.05, symmetric=symmetric), rel=1e-9)


@pytest.mark.parametrize("symmetric", [False, True])
def test_identical_targets_are_masked(symmetric):
    q, t = _normed(6, 8, 2), _normed(8, 8, 3)
    # rows 0 and 3 share the target "dog"; hard negative 7 is a copy of row 1's positive
    t[3] = t[0]
    t[7] = t[1]
    keys = torch.tensor([10, 11, 12, 10, 14, 15, 16, 11])
    got = InfoNCE(temperature=0.05, symmetric=symmetric)(q, t, keys)
    assert got.item() == pytest.approx(naive_loss(q, t, keys, tau=0.05, symmetric=symmetric), rel=1e-9)
    unmasked = InfoNCE(temperature=0.05, symmetric=symmetric)(q, t)
    assert got.item() < unmasked.item()  # removing false negatives can only lower the loss


def test_infonce_hand_worked():
    # 2 queries, 2 targets in 2-D: s = [[1, 0], [0.6, 0.8]] with q = [[1,0],[0.6,0.8]], t = I.
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    t = torch.eye(2, dtype=torch.float64)
    tau = 0.5
    # row 0: -log(e^{2} / (e^{2} + e^{0})); row 1: -log(e^{1.6} / (e^{1.2} + e^{1.6}))
    expected = 0.5 * (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6))))
    assert InfoNCE(temperature=tau)(q, t).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("alpha", [0.5, 9.0])
def test_hardness_weighted_matches_naive_loop(symmetric, alpha):
    q, t = _normed(5, 12, 4), _normed(8, 12, 5)
    t[2] = t[4]
    keys = torch.tensor([1, 2, 3, 4, 3, 6, 7, 8])
    loss = HardnessWeightedInfoNCE(temperature=0.02, alpha=alpha, symmetric=symmetric)
    got = loss(q, t, keys)
    want = naive_loss(q, t, keys, tau=0.02, alpha=alpha, symmetric=symmetric)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_hardness_weights_are_detached():
    """The weight exp(α·sg(s)) carries no gradient: d/ds of the weighted term is the plain softmax's."""
    q, t = _normed(4, 8, 6).requires_grad_(), _normed(4, 8, 7)
    alpha, tau = 2.0, 0.1
    HardnessWeightedInfoNCE(temperature=tau, alpha=alpha, symmetric=False)(q, t).backward()
    # Reference: the same logits with the weights as constants.
    q2 = q.detach().clone().requires_grad_()
    sim = q2 @ t.T
    w = torch.exp(alpha * (q.detach() @ t.T))
    w.fill_diagonal_(1.0)
    logits = sim / tau + torch.log(w)
    torch.nn.functional.cross_entropy(logits, torch.arange(4)).backward()
    assert torch.allclose(q.grad, q2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("symmetric", [False, True])
def test_alpha_zero_is_infonce(symmetric):
    q, t = _normed(7, 16, 8).float(), _normed(10, 16, 9).float()
    keys = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 1, 9])
    a = HardnessWeightedInfoNCE(temperature=0.02, alpha=0.0, symmetric=symmetric)(q, t, keys)
    b = InfoNCE(temperature=0.02, symmetric=symmetric)(q, t, keys)
    assert torch.equal(a, b)


def test_learnable_temperature_gets_gradient_and_is_clamped():
    q, t = _normed(4, 8, 10).float(), _normed(4, 8, 11).float()
    loss = InfoNCE(temperature=0.05, learnable_temperature=True, temperature_min=0.01, temperature_max=0.5)
    loss(q, t).backward()
    assert loss.temperature.log_scale.grad is not None and loss.temperature.log_scale.grad != 0
    with torch.no_grad():
        loss.temperature.log_scale.fill_(math.log(1e6))
    assert loss.temperature.value == pytest.approx(0.01)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="temperature"):
        InfoNCE(temperature=0.0)
    with pytest.raises(ValueError, match="positives"):
        InfoNCE()(torch.randn(4, 3), torch.randn(2, 3))
    with pytest.raises(ValueError, match="alpha"):
        HardnessWeightedInfoNCE(alpha=float("nan"))
