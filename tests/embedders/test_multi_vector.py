"""The multi-vector head: per-token unit vectors, padding and skipped tokens zeroed, the token dimension truncated
and re-normalised; training through the shared core: 2 gloo ranks gathering token vectors (padded to a common
length) give the gradients of one process on the concatenated batch, and GradCache with the head gives the plain
step's gradients (tests/helpers/ddp_step.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from embedders import Embedder
from embedders.multi_vector import cat_padded, head_config

HELPER = Path(__file__).resolve().parents[1] / "helpers" / "ddp_step.py"
_spec = importlib.util.spec_from_file_location("ddp_step", HELPER)
ddp_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_step)

TEXTS = ["a red circle on the left", "<|image_1|>\nRepresent the given image.", "blue"]


def _build(**head):
    torch.manual_seed(0)
    return Embedder.build("qwen2_vl", config={}, pooling="multi_vector", multi_vector={"dim": 16, **head})


def _images():
    return [None, Image.new("RGB", (56, 56), "red"), None]


def test_token_vectors_are_unit_and_padding_is_zero():
    embedder = _build()
    inputs = embedder.input_builder(TEXTS, _images(), "query")
    out = embedder(inputs)
    mask = inputs["attention_mask"].bool()
    assert out.shape[:2] == mask.shape and out.shape[2] == 16
    norms = out.norm(dim=-1)
    assert torch.allclose(norms[mask], torch.ones(int(mask.sum())), atol=1e-5)
    assert norms[~mask].abs().max() == 0
    # Embedder.encode pads batches of different token counts with zero rows
    enc = embedder.encode(TEXTS, _images(), batch_size=1)
    assert enc.shape[0] == 3 and (enc.ne(0).any(-1).sum(1) == mask.sum(1)).all()


def test_skip_tokens_are_never_scored():
    plain, skipping = _build(), _build(skip_tokens=["<|vision_start|>", "<|vision_end|>"])
    inputs = plain.input_builder(TEXTS, _images(), "query")
    ids = inputs["input_ids"]
    tok = plain.processor.tokenizer
    skipped = torch.isin(ids, torch.tensor(tok.convert_tokens_to_ids(["<|vision_start|>", "<|vision_end|>"])))
    assert skipped.any()
    a, b = plain(inputs), skipping(inputs)
    assert b[skipped].abs().max() == 0 and torch.allclose(a[~skipped], b[~skipped])
    special = _build(skip_tokens="special").head.skip_ids.tolist()
    assert tok.convert_tokens_to_ids("<|im_start|>") in special
    assert tok.convert_tokens_to_ids("<|image_pad|>") not in special  # the image patches are the document
    with pytest.raises(ValueError, match="not a single token"):
        _build(skip_tokens=["two words"])


def test_truncated_token_dimension_is_renormalised():
    embedder = _build()
    full = embedder.encode(TEXTS[:1])
    cut = embedder.truncated(8).encode(TEXTS[:1])
    keep = full.ne(0).any(-1)
    assert cut.shape[-1] == 8 and torch.equal(cut.ne(0).any(-1), keep)
    # the cut vector is the normalised prefix of the (unnormalised) projection, not of the full unit vector
    inputs = embedder.input_builder(TEXTS[:1], None, "query")
    states = embedder.family.encode_inputs(embedder.backbone, inputs, "multi_vector")
    proj = embedder.head.proj(states)[..., :8]
    want = torch.nn.functional.normalize(proj, dim=-1)[inputs["attention_mask"].bool()]
    assert torch.allclose(cut[keep], want, atol=1e-6)


def test_configuration_errors_are_named():
    with pytest.raises(ValueError, match="unknown key"):
        head_config({"dims": 64})
    with pytest.raises(ValueError, match="similarity"):
        _build(similarity="cosine")
    with pytest.raises(ValueError, match="supports pooling"):
        Embedder.build("clip", config={}, pooling="multi_vector")


def test_cat_padded_pads_the_token_axis():
    a, b = torch.ones(2, 3, 4), torch.ones(1, 5, 4)
    out = cat_padded([a, b])
    assert out.shape == (3, 5, 4) and out[:2, 3:].abs().sum() == 0
    assert torch.equal(cat_padded([torch.ones(2, 4), torch.zeros(1, 4)]), torch.cat([torch.ones(2, 4), torch.zeros(1, 4)]))


# ------------------------------------------------------------------ training through the shared core
def _run(out: Path, devices: int, sizes: str, negatives: str, chunk: int = 0):
    cmd = [sys.executable, str(HELPER), str(out), "--devices", str(devices), "--sizes", sizes,
           "--negatives", negatives, "--chunk", str(chunk), "--multi-vector", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(devices)]


def _relative_error(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    num = sum(((a[n] - b[n]).double() ** 2).sum() for n in b)
    den = sum((b[n].double() ** 2).sum() for n in b)
    return float((num / den).sqrt())


def test_two_ranks_gather_token_vectors_like_one_process(tmp_path):
    """Ranks hold 3 and 2 pairs, 1 and 2 hard negatives, rows of different token counts; a target on rank 0 is
    identical to one on rank 1 (masked across ranks); the head's projection gets its gradient too."""
    ranks = _run(tmp_path, 2, "3,2", "1,2")
    ref_loss, ref_grads = ddp_step.reference_step([3, 2], [1, 2], multi_vector=16)
    assert sum(r["loss"] for r in ranks) / 2 == pytest.approx(ref_loss, rel=1e-5)
    assert any(n.endswith("head.proj.weight") for n in ref_grads)
    for r in ranks:
        assert _relative_error(r["grads"], ref_grads) < 1e-5


def test_gradcache_with_the_multi_vector_head_equals_the_plain_step(tmp_path):
    (rank,) = _run(tmp_path, 1, "5", "2", chunk=2)
    ref_loss, ref_grads = ddp_step.reference_step([5], [2], multi_vector=16)
    assert rank["loss"] == pytest.approx(ref_loss, rel=1e-5)
    assert _relative_error(rank["grads"], ref_grads) < 1e-5


def test_pooled_proxy_is_the_normalised_mean_of_the_tokens():
    from embedders.multi_vector import pooled_proxy

    x = torch.zeros(2, 3, 4)
    x[0, :2] = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), dim=-1)
    x[1, :1] = torch.tensor([0, 0, 1.0, 0])
    want = torch.tensor([[2 ** -0.5, 2 ** -0.5, 0, 0], [0, 0, 1.0, 0]])
    assert torch.allclose(pooled_proxy(x), want)
    assert torch.equal(pooled_proxy(want), want)  # single-vector embeddings pass through
