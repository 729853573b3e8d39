"""Fitting trains the backbone in train mode, as the references' trainers do (HF Trainer calls `model.train()`):
`from_pretrained` returns a model in eval mode and Lightning keeps submodule modes as it finds them, so without
`EmbeddingModule.setup` dropout stayed off and transformers' gradient checkpointing (active only while
`training`) was silently skipped. Checked on the real all-MiniLM-L6-v2 (dropout 0.1), loaded as users load it."""

from __future__ import annotations

import lightning as L
import torch

from embedders import EmbeddingModule
from losses import InfoNCE

TEXTS = ["a red circle", "a blue square", "two green stars", "the yellow triangle"]
BODIES = ["A circle coloured red.", "A square coloured blue.", "Two stars, both green.", "One triangle, yellow."]


def _module(path, checkpointing: bool) -> EmbeddingModule:
    return EmbeddingModule(family="text_encoder", path=str(path), pooling="mean", gradient_checkpointing=checkpointing,
                           optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-5},
                           scheduler=None, loss=InfoNCE(temperature=0.05, symmetric=True))


def _fit_one_step(module: EmbeddingModule) -> tuple[list[set[str]], list[bool]]:
    """One optimizer step; returns the names of the submodules in eval mode at the step's start and the mode of
    every call of a module inside the first encoder layer (transformers checkpoints a layer's `forward`, so the
    recomputation in the backward calls the modules inside it again, not the layer's own hooks)."""
    build = module.embedder.input_builder
    batch = {"query": [build(TEXTS, [None] * 4, "query")], "target": [build(BODIES, [None] * 4, "target")],
             "target_keys": torch.arange(4), "num_pairs": 4, "ids": [f"r{i}" for i in range(4)]}
    in_eval: list[set[str]] = []
    layer_calls: list[bool] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            in_eval.append({n for n, m in pl_module.named_modules() if not m.training})

    layer = module.embedder.backbone.encoder.layer[0].intermediate
    handle = layer.register_forward_hook(lambda m, args, out: layer_calls.append(m.training))
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[Probe()])
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    handle.remove()
    return in_eval, layer_calls


def test_a_pretrained_backbone_trains_in_train_mode_with_checkpointing_active(minilm_path):
    module = _module(minilm_path, checkpointing=True)
    assert not module.embedder.backbone.training  # as from_pretrained returns it
    in_eval, layer_calls = _fit_one_step(module)
    assert in_eval == [set()]
    # the forward, then its recomputation in the backward: gradient checkpointing really ran
    assert layer_calls == [True, True, True, True]  # query and target chunks, each computed twice
    # encoding after fitting is deterministic (eval mode inside encode), and fitting's mode is left as it was
    a = module.embedder.encode(TEXTS, side="query")
    assert torch.equal(a, module.embedder.encode(TEXTS, side="query"))
    assert module.training


def test_without_checkpointing_each_layer_runs_once_and_dropout_is_on(minilm_path):
    module = _module(minilm_path, checkpointing=False)
    _, layer_calls = _fit_one_step(module)
    assert layer_calls == [True, True]
    # dropout on: two training-mode forwards of the same input differ (p = 0.1 in all-MiniLM-L6-v2's config)
    inputs = module.embedder.input_builder(TEXTS, [None] * 4, "query")
    assert module.embedder.training
    with torch.no_grad():
        assert not torch.equal(module.embedder(inputs), module.embedder(inputs))
