"""Late interaction in the contrastive core: blocked MaxSim against a naive per-pair loop; InfoNCE and
hardness-weighted InfoNCE on token vectors (hard negatives, identical-target masking, both directions) against a
naive per-row loop and against sentence-transformers' multi-vector MNRL (and its dense MNRL with hardness weighting
and a MaxSim similarity) on the same token vectors; Matryoshka on the token dimension against explicit prefixes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from losses import HardnessWeightedInfoNCE, InfoNCE, Similarity, maxsim
from losses.late_interaction import EMPTY_DOCUMENT_SCORE


def tokens(n, length, d, seed, dtype=torch.float64, min_len=1):
    """n rows of up to `length` unit token vectors (random lengths ≥ min_len), zero rows after."""
    g = torch.Generator().manual_seed(seed)
    x = nn.functional.normalize(torch.randn(n, length, d, generator=g, dtype=dtype), dim=-1)
    lens = torch.randint(min_len, length + 1, (n,), generator=g)
    return x * (torch.arange(length)[None, :] < lens[:, None])[..., None].to(dtype)


def naive_maxsim(q, d, mean=False):
    """Python floats, one pair at a time, tokens = the non-zero rows."""
    out = []
    for qi in q.tolist():
        q_tok = [t for t in qi if any(v != 0 for v in t)]
        row = []
        for dj in d.tolist():
            d_tok = [t for t in dj if any(v != 0 for v in t)]
            if not d_tok:  # sentence-transformers' sentinel, normalised like any score
                row.append(EMPTY_DOCUMENT_SCORE / max(len(q_tok), 1) if mean else EMPTY_DOCUMENT_SCORE)
                continue
            s = sum(max(sum(a * b for a, b in zip(qt, dt)) for dt in d_tok) for qt in q_tok)
            row.append(s / max(len(q_tok), 1) if mean else s)
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def naive_loss(q, t, keys=None, tau=0.02, alpha=0.0, symmetric=False, mean=False):
    """Per-row loop of METHODS §2.1/§2.2 with s(q, d) = MaxSim (Python floats)."""
    b = q.shape[0]
    s = naive_maxsim(q, t, mean).tolist()  # [B, B+M] query × target
    keys = keys.tolist() if keys is not None else list(range(t.shape[0]))

    def row_loss(scores, col_keys, label, label_key):
        denom = math.exp(scores[label] / tau)
        for j, sj in enumerate(scores):
            if j == label or col_keys[j] == label_key:
                continue
            denom += math.exp(alpha * sj) * math.exp(sj / tau)
        return -(scores[label] / tau - math.log(denom))

    forward = [row_loss(s[i], keys, i, keys[i]) for i in range(b)]
    if not symmetric:
        return sum(forward) / b
    backward = [row_loss([s[k][i] for k in range(b)], keys[:b], i, keys[i]) for i in range(b)]
    return sum(0.5 * (f + r) for f, r in zip(forward, backward)) / b


@pytest.mark.parametrize("mean", [False, True])
def test_blocked_maxsim_equals_naive_loop(mean):
    q, d = tokens(5, 6, 8, 0), tokens(7, 9, 8, 1)
    d[3] = 0  # a document without a token
    want = naive_maxsim(q, d, mean)
    for block in (1, 7, 50, 1 << 24):  # one interaction per block … everything in one block
        got = maxsim(q, d, mean=mean, block_elements=block)
        assert got.shape == (5, 7)
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), block


def test_blocked_maxsim_gradients_do_not_depend_on_the_block():
    q, d = tokens(4, 5, 8, 2).requires_grad_(), tokens(6, 7, 8, 3).requires_grad_()
    w = torch.randn(4, 6, dtype=torch.float64)
    grads = []
    for block in (3, 1 << 24):
        q.grad = d.grad = None
        (maxsim(q, d, block_elements=block) * w).sum().backward()
        grads.append((q.grad.clone(), d.grad.clone()))
    for a, b in zip(*grads):  # equal up to the order of fp64 sums
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # padding receives no gradient: it is no token
    pad = ~q.ne(0).any(-1)
    assert grads[0][0][pad].abs().max() == 0


def test_padding_never_wins_a_max():
    """A document whose real tokens all score negatively keeps its negative score (a zero row would give 0)."""
    q = torch.tensor([[[1.0, 0.0]]])
    d = torch.tensor([[[-1.0, 0.0], [0.0, 0.0]]])
    assert maxsim(q, d).item() == -1.0


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("negatives", [0, 3])
@pytest.mark.parametrize("mean", [False, True])
def test_infonce_on_token_vectors_matches_naive_loop(symmetric, negatives, mean):
    q, t = tokens(5, 4, 8, 4), tokens(5 + negatives, 6, 8, 5)
    loss = InfoNCE(temperature=0.05, symmetric=symmetric)
    loss.similarity = Similarity("meanmaxsim" if mean else "maxsim")
    got = loss(q, t)
    assert got.item() == pytest.approx(naive_loss(q, t, tau=0.05, symmetric=symmetric, mean=mean), rel=1e-9)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("alpha", [0.5, 9.0])
def test_hardness_weighted_on_token_vectors_matches_naive_loop(symmetric, alpha):
    """α on the MaxSim score, hard negatives and identical-target masking included."""
    q, t = tokens(5, 4, 8, 6), tokens(8, 6, 8, 7)
    t[4] = t[2]  # rows 2 and 4 share their target; hard negative 7 is a copy of row 1's positive
    t[7] = t[1]
    keys = torch.tensor([1, 2, 3, 4, 3, 6, 7, 2])
    loss = HardnessWeightedInfoNCE(temperature=0.5, alpha=alpha, symmetric=symmetric)
    got = loss(q, t, keys)
    assert got.item() == pytest.approx(naive_loss(q, t, keys, tau=0.5, alpha=alpha, symmetric=symmetric), rel=1e-9)


# ------------------------------------------------------------------ sentence-transformers on the same token vectors
class _Bank(nn.Module):
    """A stand-in MultiVectorEncoder: `input_ids[:, 0]` indexes precomputed token vectors."""

    def __init__(self, bank):
        from sentence_transformers.util.similarity import maxsim as st_maxsim

        super().__init__()
        self.bank = bank
        self.similarity = st_maxsim

    def forward(self, features, task=None):
        e = self.bank[features["input_ids"][:, 0]]
        return {"token_embeddings": e, "attention_mask": e.ne(0).any(-1).long()}


def _pad(x, width):
    return nn.functional.pad(x, (0, 0, 0, width - x.shape[1]))


def _features(ids):
    return {"input_ids": ids[:, None], "attention_mask": torch.ones(len(ids), 1, dtype=torch.long)}


@pytest.mark.parametrize("tau", [0.1, 0.02])
def test_infonce_equals_sentence_transformers_multi_vector_mnrl(tau):
    from sentence_transformers.multi_vector_encoder.losses import MultiVectorMultipleNegativesRankingLoss

    b, d = 6, 16
    q, p, n = (tokens(b, 5, d, 8, torch.float32), tokens(b, 9, d, 9, torch.float32),
               tokens(b, 7, d, 10, torch.float32))
    width = 9
    bank = torch.cat([_pad(q, width), _pad(p, width), _pad(n, width)]).requires_grad_()
    theirs = MultiVectorMultipleNegativesRankingLoss(_Bank(bank), scale=1 / tau)(
        [_features(torch.arange(b)), _features(torch.arange(b, 2 * b)), _features(torch.arange(2 * b, 3 * b))])
    theirs.backward()
    qq, tt = q.clone().requires_grad_(), torch.cat([_pad(p, width), _pad(n, width)]).requires_grad_()
    ours = InfoNCE(temperature=tau)(qq, tt)  # explicit hard negatives: one per query, shared by the batch
    ours.backward()
    assert abs(ours.item() - theirs.item()) <= 1e-6 * max(1.0, abs(theirs.item()))
    for ours_grad, theirs_grad in ((qq.grad, bank.grad[:b, :5]), (tt.grad, bank.grad[b:])):
        scale = max(1.0, theirs_grad.abs().max().item())  # fp32: the gradients grow as 1/τ
        assert (ours_grad - theirs_grad).abs().max().item() <= 1e-6 * scale


@pytest.mark.parametrize("alpha", [0.5, 9.0])
def test_hardness_weighted_equals_sentence_transformers_mnrl_with_maxsim(alpha):
    """sentence-transformers' MNRL (hardness_mode=all_negatives, strength α; LLaVE) with MaxSim as its similarity."""
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.util.similarity import maxsim as st_maxsim

    b, d, width = 6, 16, 8
    q = tokens(b, 5, d, 11, torch.float32)
    p, n = _pad(tokens(b, 8, d, 12, torch.float32), width), _pad(tokens(b, 6, d, 13, torch.float32), width)
    st = MultipleNegativesRankingLoss.__new__(MultipleNegativesRankingLoss)
    nn.Module.__init__(st)
    st.scale, st.similarity_fct, st.gather_across_devices = 10.0, st_maxsim, False
    st.directions, st.partition_mode = ("query_to_doc",), "joint"
    st.hardness_mode, st.hardness_strength = "all_negatives", alpha
    theirs = st.compute_loss_from_embeddings([q, p, n], None)
    ours = HardnessWeightedInfoNCE(temperature=0.1, alpha=alpha, symmetric=False)(q, torch.cat([p, n]))
    assert abs(ours.item() - theirs.item()) <= 1e-6 * max(1.0, abs(theirs.item()))


def test_matryoshka_on_the_token_dimension_is_the_sum_over_prefixes():
    q, t = tokens(4, 5, 12, 14).requires_grad_(), tokens(6, 6, 12, 15).requires_grad_()
    dims, weights = [4, 12], [0.5, 1.0]
    got = InfoNCE(temperature=0.1, symmetric=True, matryoshka_dims=dims, matryoshka_weights=weights)(q, t)
    want = sum(w * InfoNCE(temperature=0.1, symmetric=True)(nn.functional.normalize(q[..., :k], dim=-1),
                                                            nn.functional.normalize(t[..., :k], dim=-1))
               for k, w in zip(dims, weights))
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    got.backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_bf16_token_vectors_score_in_fp32_under_autocast():
    q, t = tokens(4, 5, 16, 16, torch.float32), tokens(4, 7, 16, 17, torch.float32)
    ref = InfoNCE(temperature=0.02)(q, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = InfoNCE(temperature=0.02)(q.bfloat16(), t.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)
    assert maxsim(q.bfloat16(), t.bfloat16()).dtype == torch.float32


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="token vectors"):
        InfoNCE()(tokens(2, 3, 8, 0), torch.randn(2, 8, dtype=torch.float64))
