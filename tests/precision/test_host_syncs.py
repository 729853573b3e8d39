"""No host sync on the training step's hot path: every conversion of a tensor to a host value (`.item()`,
`bool()`, `int()`, `float()`, `.tolist()`, `.cpu()`, `.numpy()`) made from Python inside a training step of the tiny
Qwen2-VL (image and text rows, plain and GradCache, bf16 autocast) is counted with its call site, and none is
allowed beyond the documented list below. Each such conversion waits for the device on a GPU (it drains the queue
of work the host has issued), so the step time would be the device time plus the host's.

Allowed in embedlab's own code:
- `embedders/module.py::_poll_finite`: the finite-loss flag, read at once on the CPU only (there is no device queue
  to wait for); on a GPU it is copied to pinned memory without waiting and read when the copy has completed.
Inside transformers' Qwen2-VL forward (transformers 5.x; not ours to remove, listed so that a new one fails the
test): the vision tower's rotary position ids and feature split read `image_grid_thw` (`.tolist()`), the check that
image features fill the image tokens (`.item()`), a compile-safety check (`.item()`), and the SDPA path's test of
whether the padding mask can be dropped (`bool()`). And torch's AdamW reads its step counters (`.item()` in the
GradCache step, which steps the optimizer itself): host tensors on every device (not capturable), no sync.
Outside the step and kept off it: the progress bar reads the logged metrics at most once a second, the stop flag of
a signal is agreed over a gloo group on host tensors (operations/interrupt.py), M-RoPE positions and the stray
image-token flag are computed in the collate step from CPU tensors (embedders/backbones/qwen2_vl.py).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
from PIL import Image

from datamodules.collate import PairCollator
from datamodules.images import ImageLoader
from datamodules.schema import Item, TrainPair
from embedders import EmbeddingModule
from losses import InfoNCE

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {("embedders/module.py", "_poll_finite")}
THIRD_PARTY = {("vision_utils.py", "get_vision_position_ids"), ("modeling_qwen2_vl.py", "<listcomp>"),
               ("modeling_qwen2_vl.py", "get_image_features"), ("modeling_qwen2_vl.py", "get_placeholder_mask"),
               ("import_utils.py", "torch_compilable_check"), ("masking_utils.py", "_ignore_causal_mask_sdpa"),
               ("optimizer.py", "_get_value")}
CONVERSIONS = ("item", "__bool__", "__int__", "__float__", "tolist", "cpu", "numpy")


class Counting:
    """Counts tensor-to-host conversions made from Python while active, by (file, function) of the caller."""

    def __init__(self):
        self.active = False
        self.sites: Counter = Counter()
        self.originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def __enter__(self):
        for name, original in self.originals.items():
            def counted(tensor, *args, _original=original, _name=name, **kwargs):
                if self.active:
                    frame = sys._getframe(1)
                    while frame.f_back is not None and Path(frame.f_code.co_filename).parent.name == "torch":
                        frame = frame.f_back  # torch's own wrappers (__format__, _check_tensor_all): their caller
                    path = Path(frame.f_code.co_filename)
                    ours = path.is_relative_to(ROOT) and "site-packages" not in path.parts
                    where = str(path.relative_to(ROOT)) if ours else path.name
                    self.sites[(where, frame.f_code.co_name, _name)] += 1
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, counted)
        return self

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)


def _batch(module, root: Path):
    rows = []
    for i in range(6):
        image = None
        if i % 2 == 0:
            image = f"{i}.png"
            Image.new("RGB", (84, 56 + 28 * i), ("red", "green", "blue")[i % 3]).save(root / image)
        query = Item(f"<|image_1|>\nRepresent the image number {i}" if image else f"a text query number {i}", image)
        rows.append(TrainPair("S", i, query, Item(f"a target {i} " * (1 + i)), ()))
    collate = PairCollator(module.embedder.input_builder, ImageLoader(root), chunk_size=module.chunk_size)
    return collate(rows)


@pytest.mark.parametrize("chunk, precision", [(None, "32-true"), (2, "32-true"), (2, "bf16-mixed")])
def test_a_training_step_converts_no_tensor_to_a_host_value(tmp_path, chunk, precision):
    torch.manual_seed(0)
    module = EmbeddingModule(family="qwen2_vl", config={}, image={"min_pixels": 56 * 56, "max_pixels": 112 * 112},
                             gradcache={"chunk_size": chunk} if chunk else None, loss=InfoNCE(temperature=0.05),
                             optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-4},
                             scheduler=None)
    batch = _batch(module, tmp_path)
    counting = Counting()
    step = module.training_step

    def counted_step(*args, **kwargs):
        counting.active = True
        try:
            return step(*args, **kwargs)
        finally:
            counting.active = False

    module.training_step = counted_step
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        precision=precision)
    with counting:
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch] * 2, batch_size=None))
    assert trainer.global_step == 2
    unexpected = {site: n for site, n in counting.sites.items() if site[:2] not in ALLOWED | THIRD_PARTY}
    assert not unexpected, f"host syncs inside the training step: {unexpected}"
    ours = sum(n for site, n in counting.sites.items() if site[:2] in ALLOWED)
    assert ours == 2  # the finite-loss flag, once per step on the CPU: the counter does count
