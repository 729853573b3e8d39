"""FSDP trains exactly like DDP: `trainer=fsdp_cpu` and `trainer=ddp_cpu`, run through `train.py`'s own code on the
same seed and data (gloo ranks, tests/helpers/parity_run.py), give the same per-step losses, the same clipped
gradient norms, the same validation loss, the same optimizer groups by parameter name and the same updated
weights (relative error of the update ≤ 1e-5 in fp32), for full fine-tuning and LoRA, tiny Qwen2-VL and tiny
LLaVA-OneVision, on 2 and 3 ranks; and GradCache under FSDP equals the plain DDP step. The batches make FSDP's hard cases: `sampler=modality` (text-only and image
query batches, weighted 1:1, so that ranks hold different modalities at some step: a rank's query chunk without
images must still run the vision units), clipping on (a global norm of 0.05: every step clips), weight decay on,
and 5 validation rows in one batch (fewer batches than ranks: filler batches). A step where no rank uses the
vision tower at all (its weights then stay untouched, as under DDP) is in tests/embedders/test_uniform_trace.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

import parity_run  # noqa: E402

CLIP = 0.05


def overrides(tiny_cfg, model: str, lora: bool) -> list[str]:
    return tiny_cfg([
        f"model={model}", *(["model.lora={r:4,alpha:8}"] if lora else []),
        "sampler=modality", "sampler.weights={image:1,text:1}", "data.batch_size=3", "data.val_per_subset=1",
        f"trainer.gradient_clip_val={CLIP}", "model.optimizer.weight_decay=0.1", "seed=6",
        "evaluate_before=false", "evaluate_after=false", "save_embedder=false", "callbacks.model_checkpoint=null",
    ])


def check_parity(out: Path, world: int, ddp: str, fsdp: str, lora: bool) -> dict:
    """Asserts DDP = FSDP for one configuration; returns what the steps covered."""
    modalities = {}
    for r in range(world):
        a, b = torch.load(out / ddp / f"rank{r}.pt"), torch.load(out / fsdp / f"rank{r}.pt")
        assert sorted(a["losses"]) == sorted(b["losses"]) == [1, 2, 3]
        for step, loss in a["losses"].items():
            assert b["losses"][step] == pytest.approx(loss, rel=1e-5), (r, step)
        for step, norm in a["norms"].items():
            assert norm > CLIP  # clipping was active
            assert b["norms"][step] == pytest.approx(norm, rel=1e-5), (r, step)
        assert a["groups"] == b["groups"]  # optimizer groups by name, built from the full shapes
        assert a["groups"]["decay"] and (lora or a["groups"]["no_decay"])
        assert a["val_loss"] is not None and b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
        assert a["modalities"] == b["modalities"]
        modalities[r] = a["modalities"]
    wa, wb = torch.load(out / ddp / "weights.pt"), torch.load(out / fsdp / "weights.pt")
    assert wa["initial"].keys() == wb["initial"].keys() == wb["final"].keys()
    diff = ref = 0.0
    for k, initial in wa["initial"].items():
        assert torch.equal(initial, wb["initial"][k]), k
        da, db = wa["final"][k] - initial, wb["final"][k] - initial
        # a weight that DDP left untouched (no rank used it) stays bit-identical under FSDP, and vice versa
        assert bool(da.any()) == bool(db.any()), k
        if k.endswith("k_proj.bias"):
            # The key bias's gradient is analytically 0 (a softmax is shift-invariant), so it is rounding noise
            # in both runs, which AdamW scales up to lr-sized steps: no figure to compare.
            continue
        diff += float((da - db).double().pow(2).sum())
        ref += float(da.double().pow(2).sum())
    assert ref > 0 and (diff / ref) ** 0.5 <= 1e-5
    steps = sorted(modalities[0])
    return {"mixed": any(len({modalities[r][s] for r in range(world)}) > 1 for s in steps)}


def run_family(tmp_path, tiny_cfg, model: str, world: int, lora_modes=(False, True), gradcache: bool = False
               ) -> list[dict]:
    runs = {}
    for lora in lora_modes:
        tag = "lora" if lora else "full"
        for trainer in ("ddp_cpu", "fsdp_cpu"):
            runs[f"{tag}_{trainer}"] = [f"trainer={trainer}", *overrides(tiny_cfg, model, lora)]
    if gradcache:
        # GradCache under FSDP against the plain DDP step: chunks of 2 rows; the cached-gradient replays
        # reduce-scatter once, in the last one. In validation the ranks hold 3 and 1 chunks (5 rows, a filler of
        # 1): the rank with fewer runs repeat forwards so that both all-gather as often.
        runs["full_fsdp_gradcache"] = ["trainer=fsdp_cpu", *overrides(tiny_cfg, model, False),
                                       "model.gradcache.chunk_size=2"]
    parity_run.launch(tmp_path, world, runs)
    covered = [check_parity(tmp_path, world, f"{'lora' if lora else 'full'}_ddp_cpu",
                            f"{'lora' if lora else 'full'}_fsdp_cpu", lora) for lora in lora_modes]
    if gradcache:
        covered.append(check_parity(tmp_path, world, "full_ddp_cpu", "full_fsdp_gradcache", False))
    return covered


def test_qwen2vl_two_ranks_full_lora_and_gradcache(tmp_path, tiny_cfg):
    covered = run_family(tmp_path, tiny_cfg, "tiny_qwen2vl", 2, gradcache=True)
    # the batches made the hard case: ranks of different query modalities at some step
    assert all(c["mixed"] for c in covered)


def test_llava_onevision_two_ranks_lora(tmp_path, tiny_cfg):
    covered = run_family(tmp_path, tiny_cfg, "tiny_llava_ov", 2, lora_modes=(True,))
    assert covered[0]["mixed"]


@pytest.mark.slow
def test_llava_onevision_two_ranks_full(tmp_path, tiny_cfg):
    covered = run_family(tmp_path, tiny_cfg, "tiny_llava_ov", 2, lora_modes=(False,))
    assert covered[0]["mixed"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny_qwen2vl", "tiny_llava_ov"])
def test_three_ranks_full_and_lora(tmp_path, tiny_cfg, model):
    covered = run_family(tmp_path, tiny_cfg, model, 3)
    assert covered[0]["mixed"]


@pytest.mark.slow
def test_other_families_two_ranks_full(tmp_path, tiny_cfg):
    """Qwen3-VL (DeepStack features) and the CLIP and SigLIP dual encoders (a tower without rows on some ranks)
    train under FSDP exactly as under DDP."""
    runs = {}
    models = ("tiny_qwen3vl", "tiny_clip", "tiny_siglip")
    for model in models:
        for trainer in ("ddp_cpu", "fsdp_cpu"):
            runs[f"{model}_{trainer}"] = [f"trainer={trainer}", *overrides(tiny_cfg, model, False)]
    parity_run.launch(tmp_path, 2, runs)
    for model in models:
        check_parity(tmp_path, 2, f"{model}_ddp_cpu", f"{model}_fsdp_cpu", False)
