"""Matryoshka losses against independent computations: a naive per-row loop on explicitly truncated and
re-normalised prefixes, autograd through explicit prefixes, sentence-transformers' MatryoshkaLoss, and (through
Lightning, 2 gloo ranks, GradCache on) a single process on the concatenated batch."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from torch.nn.functional import normalize

from losses import HardnessWeightedInfoNCE, InfoNCE, Matryoshka

TESTS = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


naive_loss = _load("contrastive_naive", TESTS / "losses" / "test_contrastive.py").naive_loss


def _normed(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return normalize(torch.randn(n, d, generator=g, dtype=dtype), dim=-1)


def naive_matryoshka(q, t, dims, weights, keys=None, **kw):
    """Σ_k w_k · naive per-row loss on normalize(x[:, :k]): every prefix materialised, Python floats."""
    return sum(w * naive_loss(normalize(q[:, :k], dim=-1), normalize(t[:, :k], dim=-1), keys, **kw)
               for k, w in zip(dims, weights))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("alpha", [None, 9.0])
def test_matches_naive_loop_on_explicit_prefixes(symmetric, alpha):
    q, t = _normed(6, 24, 0), _normed(9, 24, 1)  # 3 explicit hard negatives
    keys = torch.tensor([10, 11, 12, 13, 14, 15, 12, 16, 17])  # negative 6 is a copy of row 2's positive
    dims, weights = [24, 4, 12], [1.0, 0.25, 2.0]  # unsorted on purpose
    kw = dict(temperature=0.05, symmetric=symmetric, matryoshka_dims=dims, matryoshka_weights=weights)
    loss = HardnessWeightedInfoNCE(alpha=alpha, **kw) if alpha is not None else InfoNCE(**kw)
    want = naive_matryoshka(q, t, dims, weights, keys, tau=0.05, alpha=alpha or 0.0, symmetric=symmetric)
    assert loss(q, t, keys).item() == pytest.approx(want, rel=1e-9)


def test_gradients_match_autograd_through_explicit_prefixes():
    q0, t0 = _normed(7, 32, 2), _normed(10, 32, 3)
    dims, weights = [8, 16, 32], [0.5, 1.0, 1.5]
    got_q, got_t = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    InfoNCE(temperature=0.02, symmetric=True, matryoshka_dims=dims, matryoshka_weights=weights)(got_q, got_t).backward()
    ref_q, ref_t = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    plain = InfoNCE(temperature=0.02, symmetric=True)
    sum(w * plain(normalize(ref_q[:, :k], dim=-1), normalize(ref_t[:, :k], dim=-1))
        for k, w in zip(dims, weights)).backward()
    torch.testing.assert_close(got_q.grad, ref_q.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_t.grad, ref_t.grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("learnable", [False, True])
def test_row_chunks_learnable_temperature_and_hardness(monkeypatch, learnable):
    """Several row chunks (the chunk is shrunk to its 16-row minimum), hard negatives, both directions, hardness
    weighting and a learnable temperature: loss and gradients (embeddings and temperature) equal autograd through
    explicit prefixes."""
    import losses.matryoshka as matryoshka

    monkeypatch.setattr(matryoshka, "CHUNK_ELEMENTS", 1)
    q0, t0 = _normed(37, 24, 11), _normed(45, 24, 12)
    dims, weights = [6, 12, 24], [0.5, 1.0, 2.0]
    kw = dict(temperature=0.05, alpha=2.0, symmetric=True, learnable_temperature=learnable)
    got_loss_fn = HardnessWeightedInfoNCE(matryoshka_dims=dims, matryoshka_weights=weights, **kw).double()
    ref_loss_fn = HardnessWeightedInfoNCE(**kw).double()
    got_q, got_t = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    got = got_loss_fn(got_q, got_t)
    got.backward()
    ref_q, ref_t = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    ref = sum(w * ref_loss_fn(normalize(ref_q[:, :k], dim=-1), normalize(ref_t[:, :k], dim=-1))
              for k, w in zip(dims, weights))
    ref.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-10)
    torch.testing.assert_close(got_q.grad, ref_q.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_t.grad, ref_t.grad, rtol=1e-9, atol=1e-12)
    if learnable:
        got_g, ref_g = got_loss_fn.temperature.log_scale.grad, ref_loss_fn.temperature.log_scale.grad
        assert got_g is not None and torch.allclose(got_g, ref_g, rtol=1e-9)


def test_uneven_row_weights_take_the_exact_path(monkeypatch):
    """The stored gradients assume one common weight per row (what the loss reductions do); other upstream
    gradients are recomputed exactly."""
    import losses.matryoshka as matryoshka

    monkeypatch.setattr(matryoshka, "CHUNK_ELEMENTS", 1)
    spec = Matryoshka([4, 16], [1.0, 0.5])
    q0, t0 = _normed(20, 16, 13), _normed(20, 16, 14)

    def row_loss(sim, rows):  # any per-row function of the similarities
        return torch.logsumexp(sim / 0.1, dim=1) - sim[torch.arange(sim.shape[0]), torch.arange(rows.start, rows.stop)]

    upstream = torch.linspace(0.1, 2.0, 20, dtype=torch.float64)
    got_q, got_t = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    (spec.combine(got_q, got_t, row_loss) * upstream).sum().backward()
    ref_q, ref_t = q0.clone().requires_grad_(), t0.clone().requires_grad_()
    ref = sum(w * row_loss(normalize(ref_q[:, :k], dim=-1) @ normalize(ref_t[:, :k], dim=-1).T, slice(0, 20))
              for k, w in zip(spec.dims, spec.weights))
    (ref * upstream).sum().backward()
    torch.testing.assert_close(got_q.grad, ref_q.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_t.grad, ref_t.grad, rtol=1e-9, atol=1e-12)


def test_full_dimension_alone_is_the_plain_loss():
    q, t = _normed(5, 16, 4), _normed(5, 16, 5)
    plain = InfoNCE(temperature=0.05)(q, t)
    assert InfoNCE(temperature=0.05, matryoshka_dims=[16])(q, t).item() == pytest.approx(plain.item(), rel=1e-12)


def test_matches_sentence_transformers_matryoshka_loss():
    """sentence-transformers' MatryoshkaLoss around MultipleNegativesRankingLoss (cosine, scale = 1/τ, anchor →
    [positives; negatives]) is InfoNCE with one explicit hard negative per row; both sum over the dims."""
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    from sentence_transformers import SentenceTransformer

    class Precomputed(torch.nn.Module):  # the only module of a real SentenceTransformer: columns come embedded
        def forward(self, features):
            return {**features, "sentence_embedding": features["emb"]}

        def get_embedding_dimension(self):
            return 32

    q, pos, neg = _normed(8, 32, 6, torch.float32), _normed(8, 32, 7, torch.float32), _normed(8, 32, 8, torch.float32)
    dims, weights, tau = [32, 16, 8, 4], [1.0, 1.0, 0.5, 2.0], 0.05
    model = SentenceTransformer(modules=[Precomputed()], device="cpu")
    reference = st_losses.MatryoshkaLoss(model, st_losses.MultipleNegativesRankingLoss(model, scale=1 / tau),
                                         matryoshka_dims=dims, matryoshka_weights=weights)
    want = reference([{"emb": q}, {"emb": pos}, {"emb": neg}], labels=None)
    got = InfoNCE(temperature=tau, matryoshka_dims=dims, matryoshka_weights=weights)(q, torch.cat([pos, neg]))
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_similarities_stay_fp32_under_bf16_autocast():
    q, t = _normed(16, 64, 9, torch.float32), _normed(16, 64, 10, torch.float32)
    loss = InfoNCE(temperature=0.02, matryoshka_dims=[64, 32, 8])
    fp32 = loss(q, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = loss(q, t)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(fp32.item(), rel=1e-6)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="exceeds the embedding dimension 16"):
        InfoNCE(matryoshka_dims=[8, 32])(_normed(3, 16, 0), _normed(3, 16, 1))
    with pytest.raises(ValueError, match="one weight per dimension"):
        InfoNCE(matryoshka_dims=[8, 16], matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="positive integers"):
        InfoNCE(matryoshka_dims=[0, 16])
    with pytest.raises(ValueError, match="repeated"):
        InfoNCE(matryoshka_dims=[16, 16])
    with pytest.raises(ValueError, match="matryoshka_dims is null"):
        InfoNCE(matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="finite non-negative"):
        Matryoshka([8], [math.nan])


def test_loss_configs_build_with_matryoshka(compose_cfg, tiny_cfg):
    from hydra.utils import instantiate

    for loss in ("infonce", "hardness_weighted"):
        cfg = compose_cfg("train", tiny_cfg([f"loss={loss}", "loss.matryoshka_dims=[64,32,16]",
                                             "loss.matryoshka_weights=[1,1,0.5]"]))
        built = instantiate(cfg.loss)
        assert built.matryoshka.dims == (16, 32, 64) and built.matryoshka.weights == (0.5, 1.0, 1.0)
        assert instantiate(compose_cfg("train", tiny_cfg([f"loss={loss}"])).loss).matryoshka is None


def _step_through_lightning(out: Path, devices: int, sizes: str, negatives: str, chunk: int, dims: str):
    import subprocess
    import sys

    cmd = [sys.executable, str(distributed.HELPER), str(out), "--devices", str(devices), "--sizes", sizes,
           "--negatives", negatives, "--chunk", str(chunk), "--matryoshka", dims]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(devices)]


distributed = _load("distributed_checks", TESTS / "embedders" / "test_distributed.py")


def _check_against_one_process(ranks, sizes, negatives, chunk, dims):
    ref_loss, ref_grads = distributed.ddp_step.reference_step(sizes, negatives, chunk, 0.0, matryoshka=dims)
    assert sum(r["loss"] for r in ranks) / len(ranks) == pytest.approx(ref_loss, rel=1e-5)
    for r in ranks:
        assert distributed.relative_error(r["grads"], ref_grads) < 1e-5
    # Negative control: the same step without Matryoshka has clearly different gradients.
    _, plain_grads = distributed.ddp_step.reference_step(sizes, negatives, chunk, 0.0)
    assert distributed.relative_error(plain_grads, ref_grads) > 1e-3


def test_gradcache_equals_plain_step(tmp_path):
    """Through Lightning with GradCache (chunks of 3): loss and every parameter gradient equal the plain step."""
    ranks = _step_through_lightning(tmp_path, 1, "7", "2", 3, "16,64")
    _check_against_one_process(ranks, [7], [2], 3, [16, 64])


@pytest.mark.slow
def test_two_ranks_with_gradcache_equal_one_process(tmp_path):
    """2 DDP ranks (gloo) with the cross-device gather and GradCache (chunks of 2): loss and every parameter
    gradient equal a plain single process on the concatenated batch (tests/helpers/ddp_step.py)."""
    ranks = _step_through_lightning(tmp_path, 2, "4,3", "1,2", 2, "16,64")
    _check_against_one_process(ranks, [4, 3], [1, 2], 2, [16, 64])
