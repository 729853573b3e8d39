"""GradCache under mixed precision and DDP: unscale before clipping (fp16), grad=None for parameters that no
rank used (as plain DDP), and a GradCache step under bf16 autocast equal to the plain step under it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
_spec = importlib.util.spec_from_file_location("ddp_step", HELPERS / "ddp_step.py")
ddp_step = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ddp_step)


def test_unused_parameters_keep_no_gradient_as_under_ddp(tmp_path):
    init = f"file://{tmp_path / 'store'}"
    procs = [subprocess.Popen([sys.executable, str(HELPERS / "unused_params_probe.py"), str(tmp_path), str(r), "2",
                               init], stderr=subprocess.PIPE, text=True) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    for r in range(2):
        res = torch.load(tmp_path / f"rank{r}.pt")
        ours, ddp = res["ours"], res["ddp"]
        assert set(ours) == set(ddp)
        for name in ours:
            if ddp[name] is None:
                assert ours[name] is None, name  # no rank used it: no gradient, as plain DDP
            else:
                assert ours[name] is not None and torch.allclose(ours[name], ddp[name], rtol=1e-6, atol=1e-7), name
        assert ddp["c.weight"] is None and ddp["b.weight"] is not None  # the probe really covers both cases
        assert not res["c_moved"]  # AdamW's decay did not touch the unused parameter
        assert res["calls"] == 2  # the flag exchange + one bucket


class GradProbe(L.Callback):
    """Gradients as the optimizer sees them (after unscaling and clipping) and the parameters after the step."""

    def on_train_start(self, trainer, pl_module):
        self.before = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}

    def on_train_end(self, trainer, pl_module):
        self.delta = {n: p.detach() - self.before[n] for n, p in pl_module.named_parameters()}


def _one_step(module, batch, **trainer_kwargs):
    probe = GradProbe()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[probe], **trainer_kwargs)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    return probe


def _rel(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    num = sum(((a[n] - b[n]).double() ** 2).sum() for n in b)
    return float((num / sum((b[n].double() ** 2).sum() for n in b)).sqrt())


def _tiny_batch(module, chunk):
    q, t = ddp_step.rank_rows([6], [2], 0)
    return ddp_step.make_batch(module, q, t, 6, chunk)


def test_gradcache_under_bf16_autocast_equals_the_plain_step():
    """Same chunks embedded op for op in both runs; what differs is only where bf16 rounding happens in the
    backward (chunk by chunk for GradCache, summed inside the autocast weight cast for the plain step), so the
    two agree to bf16 precision — as closely as each agrees with the fp32 step — while a step with another
    temperature is far away."""
    from losses import InfoNCE

    grads = {}
    for name, chunk_module in (("gradcache", 2), ("plain", None)):
        module = ddp_step.build_module(chunk_module, 0.0)
        grads[name] = _one_step(module, _tiny_batch(module, 2), precision="bf16-mixed").grads
    module = ddp_step.build_module(None, 0.0)
    fp32 = _one_step(module, _tiny_batch(module, 2)).grads
    module = ddp_step.build_module(None, 0.0)
    module.loss = InfoNCE(temperature=0.1, symmetric=True)
    other = _one_step(module, _tiny_batch(module, 2)).grads
    assert _rel(grads["gradcache"], grads["plain"]) < 2e-2
    assert _rel(grads["gradcache"], fp32) < 2e-2 and _rel(grads["plain"], fp32) < 2e-2
    assert _rel(grads["plain"], fp32) > 1e-4  # autocast really was on
    assert _rel(grads["plain"], other) > 0.2  # the tolerance separates right from wrong


def test_fp16_gradcache_clips_unscaled_gradients():
    """SGD(lr=1): the update is minus the clipped gradient. Clipped after unscaling its norm is the clip value;
    clipped while still multiplied by the loss scale (1024) it would be 1024 times smaller."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    clip = 1e-3
    module = ddp_step.build_module(2, 0.0)
    module.hparams.optimizer["lr"] = 1.0
    module.manual_gradient_clip = (clip, "norm")
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    probe = _one_step(module, _tiny_batch(module, 2), plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    assert scaler.get_scale() == 1024.0  # no overflow: the step was taken
    norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in probe.delta.values())))
    assert norm == pytest.approx(clip, rel=1e-3)
    # Callbacks' on_before_optimizer_step (the probe) runs before the module's, which clips: the probe sees the
    # unscaled, unclipped gradient, whose norm is the fp32 step's (to fp16 precision), not 1024 times it.
    grad_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in probe.grads.values())))
    reference = ddp_step.build_module(2, 0.0)
    fp32 = _one_step(reference, _tiny_batch(reference, 2)).grads
    fp32_norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in fp32.values())))
    assert grad_norm == pytest.approx(fp32_norm, rel=0.05) and grad_norm > 10 * clip
