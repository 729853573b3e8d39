"""The distillation loss (losses/distillation.py) against a naive per-row loop and sentence-transformers'
KL-distillation losses (SentenceTransformer, SparseEncoder and MultiVectorEncoder variants) where they overlap."""

from __future__ import annotations

import math

import pytest
import torch

from losses import Distillation, InfoNCE
from losses.distillation import candidate_columns


def _normed(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def naive_kl(q, t, keys, teacher_keys, teacher_scores, tau_s, tau_t):
    """Per row, in Python floats: the candidates the teacher scored that are among the targets (the row's own
    positive at its own column, any other at the first column with its key), KL(teacher ‖ student) over them."""
    q, t, keys = q.tolist(), t.tolist(), keys.tolist()
    total = 0.0
    for i, (row_keys, row_scores) in enumerate(zip(teacher_keys.tolist(), teacher_scores.tolist())):
        student, teacher = [], []
        for key, score in zip(row_keys, row_scores):
            if key < 0 or key not in keys:
                continue
            col = i if key == keys[i] else keys.index(key)
            student.append(sum(a * b for a, b in zip(q[i], t[col])) / tau_s)
            teacher.append(score / tau_t)
        if not student:
            continue
        zs = math.log(sum(math.exp(s) for s in student))
        zt = math.log(sum(math.exp(x) for x in teacher))
        total += sum(math.exp(x - zt) * ((x - zt) - (s - zs)) for s, x in zip(student, teacher))
    return total / len(q)


def batch(b=6, negatives_per_row=2, seed=0):
    """Queries, targets (B positives, then each row's negatives), distinct keys, and teacher scores per row for
    its positive, its negatives, another row's positive (an in-batch candidate), one absent key and padding."""
    q, t = _normed(b, 16, seed), _normed(b + b * negatives_per_row, 16, seed + 1)
    keys = torch.arange(t.shape[0]) + 1000
    g = torch.Generator().manual_seed(seed + 2)
    rows_keys, rows_scores = [], []
    for i in range(b):
        own = [1000 + i] + [1000 + b + i * negatives_per_row + k for k in range(negatives_per_row)]
        row = own + [1000 + (i + 1) % b, 99, -1]
        rows_keys.append(row)
        rows_scores.append(torch.randn(len(row), generator=g, dtype=torch.float64).tolist())
    return q, t, keys, torch.tensor(rows_keys), torch.tensor(rows_scores, dtype=torch.float64)


@pytest.mark.parametrize("tau_s,tau_t", [(0.05, 0.02), (1.0, 2.0)])
def test_kl_alone_matches_naive_loop(tau_s, tau_t):
    q, t, keys, tk, ts = batch()
    got = Distillation(temperature=tau_s, teacher_temperature=tau_t)(q, t, keys, teacher_keys=tk, teacher_scores=ts)
    assert got.item() == pytest.approx(naive_kl(q, t, keys, tk, ts, tau_s, tau_t), rel=1e-10)


@pytest.mark.parametrize("symmetric", [False, True])
def test_kl_plus_infonce_is_the_weighted_sum(symmetric):
    q, t, keys, tk, ts = batch(seed=3)
    got = Distillation(temperature=0.05, student_temperature=0.1, teacher_temperature=0.5, distill_weight=0.7,
                       contrastive_weight=2.0, symmetric=symmetric)(q, t, keys, teacher_keys=tk, teacher_scores=ts)
    want = 2.0 * InfoNCE(temperature=0.05, symmetric=symmetric)(q, t, keys) + \
        0.7 * naive_kl(q, t, keys, tk, ts, 0.1, 0.5)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)


def test_hand_worked_two_candidates():
    # One row, candidates at cosines 1 and 0 (student) and teacher scores ln 3 and 0 at τ = 1:
    # p = (3/4, 1/4), q_s = (e/(e+1), 1/(e+1)); KL = Σ p (log p − log q_s).
    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    keys = torch.tensor([5, 6])
    tk, ts = torch.tensor([[5, 6]]), torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    e = math.e
    want = 0.75 * (math.log(0.75) - math.log(e / (e + 1))) + 0.25 * (math.log(0.25) - math.log(1 / (e + 1)))
    got = Distillation(temperature=1.0, teacher_temperature=1.0)(q, t, keys, teacher_keys=tk, teacher_scores=ts)
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_candidate_columns():
    # Columns: positives of rows 0, 1 (row 1's positive is a copy of row 0's), then negatives 7, 8, 7.
    column_keys = torch.tensor([5, 5, 7, 8, 7])
    labels = torch.tensor([0, 1])
    teacher_keys = torch.tensor([[5, 7, 9, -1], [5, 8, 7, -1]])
    cols = candidate_columns(teacher_keys, column_keys, labels, column_keys[labels])
    # row 1's own positive is its own column 1; 7 is the first column holding key 7; 9 is absent
    assert cols.tolist() == [[0, 2, -1, -1], [1, 3, 2, -1]]


def test_teacher_is_detached_and_gradients_match_autograd_of_the_naive_formula():
    q, t, keys, tk, ts = batch(seed=5)
    q.requires_grad_(), t.requires_grad_()
    Distillation(temperature=0.1, teacher_temperature=0.3)(q, t, keys, teacher_keys=tk, teacher_scores=ts).backward()
    q2, t2 = q.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    # The same formula in tensors, per row.
    total = 0
    for i in range(q.shape[0]):
        cols, scores = [], []
        for key, score in zip(tk[i].tolist(), ts[i]):
            if key in keys.tolist():
                cols.append(i if key == int(keys[i]) else keys.tolist().index(key))
                scores.append(score)
        s = torch.stack([q2[i] @ t2[c] for c in cols]) / 0.1
        p = torch.softmax(torch.stack(scores) / 0.3, 0)
        total = total + (p * (p.log() - torch.log_softmax(s, 0))).sum()
    (total / q.shape[0]).backward()
    assert torch.allclose(q.grad, q2.grad, rtol=1e-9, atol=1e-12)
    assert torch.allclose(t.grad, t2.grad, rtol=1e-9, atol=1e-12)


def _st_columns(b=8, n_neg=3, seed=11):
    """Queries, positives and n_neg negative columns (sentence-transformers' layout), the same as a batch here
    (targets = positives then each row's negatives), and teacher labels [B, 1 + n_neg]."""
    q = _normed(b, 32, seed, torch.float32)
    pos = _normed(b, 32, seed + 1, torch.float32)
    negs = [_normed(b, 32, seed + 2 + k, torch.float32) for k in range(n_neg)]
    labels = torch.randn(b, 1 + n_neg, generator=torch.Generator().manual_seed(seed + 9)) * 3
    target = torch.cat([pos, torch.stack(negs, 1).reshape(b * n_neg, 32)])
    keys = torch.arange(target.shape[0])
    teacher_keys = torch.stack([torch.arange(b)] + [b + torch.arange(b) * n_neg + k for k in range(n_neg)], 1)
    return q, pos, negs, labels, target, keys, teacher_keys


@pytest.mark.parametrize("tau_s,tau_t", [(1.0, 1.0), (0.5, 2.0), (0.05, 0.05)])
def test_matches_sentence_transformers_distill_kl_div(tau_s, tau_t):
    """DistillKLDivLoss(student_temperature, teacher_temperature) with dot-product similarity is this loss alone,
    with temperature_squared (it multiplies by τ_s²), when each row's candidates are its own positive and negatives."""
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from sentence_transformers.util import pairwise_dot_score

    q, pos, negs, labels, target, keys, teacher_keys = _st_columns()
    reference = st_losses.DistillKLDivLoss(None, similarity_fct=pairwise_dot_score, student_temperature=tau_s,
                                           teacher_temperature=tau_t)
    want = reference.compute_loss_from_embeddings([q, pos, *negs], labels)
    got = Distillation(temperature=tau_s, teacher_temperature=tau_t, temperature_squared=True, temperature_min=1e-3,
                       temperature_max=10.0)(q, target, keys, teacher_keys=teacher_keys, teacher_scores=labels)
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))


def test_matches_sentence_transformers_sparse_distill_kl_div():
    """SparseDistillKLDivLoss is DistillKLDivLoss on sparse vectors: on the same (dense) vectors it agrees too."""
    sparse_losses = pytest.importorskip("sentence_transformers.sparse_encoder.losses")
    from sentence_transformers.util import pairwise_dot_score

    q, pos, negs, labels, target, keys, teacher_keys = _st_columns(seed=21)
    reference = sparse_losses.SparseDistillKLDivLoss(None, similarity_fct=pairwise_dot_score, temperature=2.0)
    want = reference.compute_loss_from_embeddings([q, pos, *negs], labels)
    got = Distillation(temperature=2.0, teacher_temperature=2.0, temperature_squared=True, temperature_max=10.0)(
        q, target, keys, teacher_keys=teacher_keys, teacher_scores=labels)
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))


def test_matches_sentence_transformers_multi_vector_distill_kl_div():
    """MultiVectorDistillKLDivLoss scores with MaxSim; with one token per side MaxSim is the dot product, so on
    one-token multi-vector embeddings it is this loss (temperature_squared)."""
    mv_losses = pytest.importorskip("sentence_transformers.multi_vector_encoder.losses")
    from sentence_transformers.multi_vector_encoder.scoring import colbert_kd_scores

    class OneToken(torch.nn.Module):  # columns come embedded: one token vector per text
        def forward(self, features, task=None):
            emb = features["emb"]
            return {"token_embeddings": emb[:, None, :], "attention_mask": torch.ones(emb.shape[0], 1)}

    q, pos, negs, labels, target, keys, teacher_keys = _st_columns(seed=31)
    reference = mv_losses.MultiVectorDistillKLDivLoss(OneToken(), similarity_fct=colbert_kd_scores,
                                                      student_temperature=0.25, teacher_temperature=1.5)
    columns = [{"emb": x, "input_ids": torch.zeros(x.shape[0], 1, dtype=torch.long),
                "attention_mask": torch.ones(x.shape[0], 1, dtype=torch.long)} for x in (q, pos, *negs)]
    want = reference(columns, labels)
    got = Distillation(temperature=0.25, teacher_temperature=1.5, temperature_squared=True)(
        q, target, keys, teacher_keys=teacher_keys, teacher_scores=labels)
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))


def test_matryoshka_distillation_is_the_sum_over_prefixes():
    q, t, keys, tk, ts = batch(seed=7)
    dims = [4, 16]
    got = Distillation(temperature=0.1, teacher_temperature=0.2, matryoshka_dims=dims)(
        q, t, keys, teacher_keys=tk, teacher_scores=ts)
    want = sum(naive_kl(torch.nn.functional.normalize(q[:, :k], dim=-1), torch.nn.functional.normalize(t[:, :k], dim=-1),
                        keys, tk, ts, 0.1, 0.2) for k in dims)
    assert got.item() == pytest.approx(want, rel=1e-9)


def test_bf16_autocast_keeps_the_loss_fp32():
    q, t, keys, tk, ts = batch(seed=8)
    q, t = q.float(), t.float()
    loss = Distillation(temperature=0.02, contrastive_weight=1.0)
    fp32 = loss(q, t, keys, teacher_keys=tk, teacher_scores=ts.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(q, t, keys, teacher_keys=tk, teacher_scores=ts.float())
    assert mixed.dtype == torch.float32 and mixed.item() == pytest.approx(fp32.item(), rel=1e-6)


def test_refusals():
    q, t, keys, tk, ts = batch()
    with pytest.raises(ValueError, match="mining.method=teacher"):
        Distillation()(q, t, keys)
    with pytest.raises(ValueError, match="target_keys"):
        Distillation()(q, t, None, teacher_keys=tk, teacher_scores=ts)
    with pytest.raises(ValueError, match="non-finite"):
        Distillation()(q, t, keys, teacher_keys=tk, teacher_scores=torch.full_like(ts, math.nan))
    with pytest.raises(ValueError, match="teacher_temperature"):
        Distillation(teacher_temperature=0)
    with pytest.raises(ValueError, match="use loss=infonce"):
        Distillation(distill_weight=0)


def test_loss_configs_build(compose_cfg, tiny_cfg):
    from hydra.utils import instantiate

    alone = instantiate(compose_cfg("train", tiny_cfg(["loss=distill"])).loss)
    combined = instantiate(compose_cfg("train", tiny_cfg(["loss=distill_infonce"])).loss)
    assert isinstance(alone, Distillation) and alone.contrastive_weight() == 0.0
    assert isinstance(combined, Distillation) and combined.contrastive_weight() == 1.0
