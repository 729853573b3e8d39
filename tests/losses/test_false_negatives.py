"""In-batch false-negative options of the shared contrastive core (losses/base.py, METHODS §12) against a naive
per-row loop, hand-worked cases, sentence-transformers' GISTEmbedLoss and MultipleNegativesRankingLoss."""

from __future__ import annotations

import math

import pytest
import torch

from losses import HardnessWeightedInfoNCE, InfoNCE


def _normed(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def naive(q, t, keys=None, tau=0.05, margin=None, guide=None, guide_margin=0.0, qq=False, dd=False,
          symmetric=False, alpha=0.0):
    """Per row, Python floats, straight from METHODS §2.1/§12: the denominator of query i holds its positive, every
    target column j that is not a copy of its positive, (qq) every other query j, (dd) every other positive j
    scored against d_i — each left out when s > s_ii + margin, or when its guide similarity exceeds the guide
    similarity of the positive minus guide_margin, or when j's positive is identical to d_i."""
    b = q.shape[0]
    q, t = q.tolist(), t.tolist()
    keys = keys.tolist() if keys is not None else list(range(len(t)))
    if guide is not None:
        gq, gt = guide[0].tolist(), guide[1].tolist()

    def row_loss(anchor, s_pos, label_key, candidates, g_pos):
        """candidates: (similarity, key of the candidate's own positive, guide similarity or None)."""
        denom = math.exp(s_pos / tau)
        for s, key, g in candidates:
            if key == label_key:
                continue
            if margin is not None and s > s_pos + margin:
                continue
            if g is not None and g > g_pos - guide_margin:
                continue
            denom += math.exp(alpha * s) * math.exp(s / tau)
        return -(s_pos / tau - math.log(denom))

    total = 0.0
    for i in range(b):
        s_pos = _dot(q[i], t[i])
        g_pos = _dot(gq[i], gt[i]) if guide is not None else None
        cands = [(_dot(q[i], t[j]), keys[j], _dot(gq[i], gt[j]) if guide else None) for j in range(len(t)) if j != i]
        if qq:
            cands += [(_dot(q[i], q[j]), keys[j], _dot(gq[i], gq[j]) if guide else None) for j in range(b) if j != i]
        if dd:
            cands += [(_dot(t[i], t[j]), keys[j], _dot(gt[i], gt[j]) if guide else None) for j in range(b) if j != i]
        forward = row_loss(q[i], s_pos, keys[i], cands, g_pos)
        if not symmetric:
            total += forward
            continue
        back = [(_dot(t[i], q[j]), keys[j], _dot(gt[i], gq[j]) if guide else None) for j in range(b) if j != i]
        total += 0.5 * forward + 0.5 * row_loss(t[i], s_pos, keys[i], back, g_pos)
    return total / b


def _case(seed, b=6, negatives=3, dup=True):
    q, t = _normed(b, 12, seed), _normed(b + negatives, 12, seed + 1)
    # make some negatives harder than positives (so the margin mask has work), and rows 0 and 3 share a target
    t[b] = torch.nn.functional.normalize(q[1] + 0.1 * t[b], dim=0)
    q[4] = torch.nn.functional.normalize(q[2] + 0.2 * q[4], dim=0)
    keys = torch.arange(b + negatives) + 100
    if dup:
        t[3] = t[0]
        keys[3] = keys[0]
    gq, gt = _normed(b, 10, seed + 2), _normed(b + negatives, 10, seed + 3)
    return q, t, keys, gq, gt


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("margin,guided,qq,dd", [
    (0.1, False, False, False), (0.0, False, False, False), (None, True, False, False), (None, False, True, True),
    (0.1, True, True, True), (None, False, True, False), (0.05, False, False, True)])
def test_options_match_naive_loop(symmetric, margin, guided, qq, dd):
    q, t, keys, gq, gt = _case(0)
    loss = InfoNCE(temperature=0.05, symmetric=symmetric, false_negative_margin=margin,
                   guide_margin=0.02 if guided else None, query_query=qq, document_document=dd)
    side = {"guide_query": gq, "guide_target": gt} if guided else {}
    got = loss(q, t, keys, **side)
    want = naive(q, t, keys, 0.05, margin, (gq, gt) if guided else None, 0.02, qq, dd, symmetric)
    assert got.item() == pytest.approx(want, rel=1e-10)
    # the case exercises the options: without them the loss differs
    assert abs(got.item() - InfoNCE(temperature=0.05, symmetric=symmetric)(q, t, keys).item()) > 1e-3


def test_options_compose_with_hardness_weighting():
    q, t, keys, gq, gt = _case(1)
    got = HardnessWeightedInfoNCE(temperature=0.05, alpha=3.0, symmetric=False, false_negative_margin=0.1,
                                  query_query=True, document_document=True)(q, t, keys)
    assert got.item() == pytest.approx(naive(q, t, keys, 0.05, 0.1, None, 0, True, True, False, alpha=3.0), rel=1e-10)


def test_margin_mask_hand_worked():
    # One query at angle 0; its positive at cosine 0.5; negative A at cosine 0.7 (> 0.5 + 0.1: masked), negative B
    # at cosine 0.55 (kept). τ = 1: L = −log(e^0.5 / (e^0.5 + e^0.55)).
    def unit(c):
        return [c, math.sqrt(1 - c * c)]

    q = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    t = torch.tensor([unit(0.5), unit(0.7), unit(0.55)], dtype=torch.float64)
    got = InfoNCE(temperature=1.0, false_negative_margin=0.1)(q, t)
    assert got.item() == pytest.approx(-math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(0.55))), rel=1e-12)
    unmasked = InfoNCE(temperature=1.0)(q, t)
    assert unmasked.item() == pytest.approx(
        -math.log(math.exp(0.5) / (math.exp(0.5) + math.exp(0.7) + math.exp(0.55))), rel=1e-12)


def test_guided_filter_hand_worked():
    # Two pairs. The guide finds row 1's positive closer to query 0 (0.9) than query 0's own positive (0.8):
    # it leaves row 0's denominator; row 1's denominator keeps row 0's positive (guide 0.1 < 0.6).
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[0.6, 0.8], [0.8, 0.6]], dtype=torch.float64)
    gq = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    gt = torch.tensor([[0.8, 0.6], [0.9, 0.6]], dtype=torch.float64)  # guide sims: row0 [0.8, 0.9], row1 [0.6, 0.6]
    got = InfoNCE(temperature=1.0, guide_margin=0.0)(q, t, guide_query=gq, guide_target=gt)
    row0 = 0.0  # only its positive remains
    row1 = -math.log(math.exp(0.6) / (math.exp(0.6) + math.exp(0.8)))  # guide 0.6 is not > 0.6: kept
    assert got.item() == pytest.approx((row0 + row1) / 2, rel=1e-12)


def test_masks_are_not_differentiated_through():
    """The masks compare detached similarities: the gradient is that of the masked loss with the mask fixed."""
    q, t, keys, gq, gt = _case(2)
    q.requires_grad_()
    InfoNCE(temperature=0.05, false_negative_margin=0.0)(q, t, keys).backward()
    sim = (q @ t.T).detach()
    fixed = sim > sim.diagonal()[:, None]
    fixed[torch.arange(6), torch.arange(6)] = False
    fixed |= (keys[:6, None] == keys[None, :]) & ~torch.eye(6, 9, dtype=torch.bool)
    q2 = q.detach().clone().requires_grad_()
    logits = (q2 @ t.T / 0.05).masked_fill(fixed, -math.inf)
    torch.nn.functional.cross_entropy(logits, torch.arange(6)).backward()
    assert torch.allclose(q.grad, q2.grad, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- sentence-transformers references
def _st_model(key):
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                                        unk_token="[UNK]")

    class Precomputed(torch.nn.Module):  # the only module of a real SentenceTransformer: columns come embedded
        def __init__(self):
            super().__init__()
            self.tokenizer, self.max_seq_length = tokenizer, 16

        def forward(self, features):
            return {**features, "sentence_embedding": features[key]}

        def get_embedding_dimension(self):
            return 24

    return SentenceTransformer(modules=[Precomputed()], device="cpu")


@pytest.mark.parametrize("with_negative", [False, True])
@pytest.mark.parametrize("anchors,positives", [(True, True), (False, False), (True, False)])
@pytest.mark.parametrize("margin", [0.0, 0.05])
def test_guided_matches_sentence_transformers_gist(with_negative, anchors, positives, margin):
    """GISTEmbedLoss (absolute margin): anchor→[positives, (anchors), (positives), negatives] with every negative
    whose guide similarity exceeds the positive's minus the margin masked is InfoNCE with guide_margin and the
    query–query (contrast_anchors) / document–document (contrast_positives) terms, one hard negative per row."""
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    b, tau = 8, 0.05
    q, p, n = (_normed(b, 24, s, torch.float32) for s in (40, 41, 42))
    gq, gp, gn = (_normed(b, 24, s, torch.float32) for s in (43, 44, 45))
    # some guide neighbours above the positive's guide similarity, so filtering has work
    gp[1] = torch.nn.functional.normalize(gq[0] * 2 + gp[1], dim=0)
    gq[5] = torch.nn.functional.normalize(gq[4] * 2 + gq[5], dim=0)
    reference = st_losses.GISTEmbedLoss(_st_model("emb"), _st_model("guide"), temperature=tau, margin=margin,
                                        contrast_anchors=anchors, contrast_positives=positives)
    columns = [{"emb": q, "guide": gq}, {"emb": p, "guide": gp}] + ([{"emb": n, "guide": gn}] if with_negative else [])
    want = reference(columns, None)
    target = torch.cat([p, n]) if with_negative else p
    guide_target = torch.cat([gp, gn]) if with_negative else gp
    got = InfoNCE(temperature=tau, guide_margin=margin, query_query=anchors, document_document=positives)(
        q, target, guide_query=gq, guide_target=guide_target)
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))
    unguided = InfoNCE(temperature=tau, query_query=anchors, document_document=positives)(q, target)
    assert abs(got.item() - unguided.item()) > 1e-3  # the guide masked something


def test_extra_terms_match_sentence_transformers_mnrl_directions():
    """MultipleNegativesRankingLoss with directions query_to_doc, query_to_query, doc_to_doc in one joint softmax
    (GTE's improved contrastive loss) is InfoNCE with query_query and document_document, without hard negatives."""
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from sentence_transformers.util import cos_sim

    q, p = _normed(10, 24, 50, torch.float32), _normed(10, 24, 51, torch.float32)
    reference = st_losses.MultipleNegativesRankingLoss(None, scale=1 / 0.05, similarity_fct=cos_sim,
                                                       directions=("query_to_doc", "query_to_query", "doc_to_doc"))
    want = reference.compute_loss_from_embeddings([q, p], None)
    got = InfoNCE(temperature=0.05, query_query=True, document_document=True)(q, p)
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))


def test_refusals():
    q, t, keys, gq, gt = _case(3)
    with pytest.raises(ValueError, match="model.guide"):
        InfoNCE(guide_margin=0.0)(q, t, keys)
    with pytest.raises(ValueError, match="false_negative_margin"):
        InfoNCE(false_negative_margin=math.inf)
    with pytest.raises(ValueError, match="not supported"):
        InfoNCE(query_query=True, matryoshka_dims=[8, 12])
    with pytest.raises(TypeError, match="document_document"):
        InfoNCE(document_document="yes")
