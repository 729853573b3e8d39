"""LoRA runs: checkpoints hold only trainable weights, `export.py` writes a merged standalone
Embedder that reloads without peft, and a checkpoint of another backbone is refused up front."""

from __future__ import annotations

import pytest
import torch

from embedders import Embedder, EmbeddingModule
from embedders.finetune import is_peft_model
from shipping.export import export_checkpoint
from training import job as train


def test_lora_checkpoint_export_and_reload(compose_cfg, tiny_cfg, tmp_path):
    cfg = compose_cfg("train", tiny_cfg(["model.lora={r:4,alpha:8}", "trainer.max_steps=2",
                                         "evaluate_before=false", "evaluate_after=false"]))
    train.run(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    # A randomly initialised base has no model.path to reload from: it stays in the checkpoint (adapters-only
    # checkpoints of a base loaded from model.path: tests/shipping/test_card_and_export.py).
    assert any("lora_" in k for k in saved["state_dict"]) and "embedlab_frozen_keys" not in saved

    module = EmbeddingModule.load_from_checkpoint(str(ckpt), map_location="cpu", loss=None)
    assert is_peft_model(module.embedder.backbone)
    out = export_checkpoint(ckpt, tmp_path / "exported")
    plain = Embedder.from_pretrained(out)
    assert not is_peft_model(plain.backbone)
    assert not any("lora" in k for k in plain.state_dict())
    texts = ["a red circle on the left", "What color is the square?"]
    assert torch.allclose(plain.encode(texts), module.embedder.encode(texts), atol=1e-5)
    trained = Embedder.from_pretrained(tmp_path / "run" / "embedder")  # the export is the trained model
    assert torch.allclose(plain.encode(texts), trained.encode(texts), atol=1e-5)


def test_checkpoint_of_another_backbone_is_refused(compose_cfg, tiny_cfg, tmp_path):
    cfg = compose_cfg("train", tiny_cfg(["trainer.max_steps=1", "evaluate_before=false", "evaluate_after=false",
                                         "save_embedder=false"]))
    train.run(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    other = compose_cfg("train", tiny_cfg(["model=tiny_llava_ov", f"ckpt_path={ckpt}"]))
    with pytest.raises(ValueError, match=r"trained with model.family='qwen2_vl', but this run has "
                                         r"model.family='llava_onevision'"):
        train.resolve_ckpt_path(other, tmp_path / "run")


def test_lora_targets_matching_nothing_are_refused():
    with pytest.raises(ValueError, match=r"LoRA target modules \['nothing_here'\] match no linear layer"):
        Embedder.build("qwen2_vl", config={}, lora={"r": 4, "target_modules": ["nothing_here"]})


def test_sharded_fsdp_checkpoint_directories(compose_cfg, tiny_cfg, tmp_path):
    """A sharded FSDP checkpoint is a directory holding meta.pt (Lightning's layout): resuming reads its
    hyperparameters (and refuses another backbone's); one without weights is named; a directory without meta.pt
    is named as neither."""
    sharded = tmp_path / "last.ckpt"
    sharded.mkdir()
    torch.save({"hyper_parameters": {"family": "llava_onevision", "path": None, "config": {}, "lora": None}},
               sharded / "meta.pt")
    cfg = compose_cfg("train", tiny_cfg([f"ckpt_path={sharded}"]))
    with pytest.raises(ValueError, match=r"trained with model.family='llava_onevision'"):
        train.resolve_ckpt_path(cfg, tmp_path / "run")
    with pytest.raises(ValueError, match=r"holds no model weights"):  # meta.pt without tensor shards
        export_checkpoint(sharded, tmp_path / "exported")
    plain_dir = tmp_path / "not_a_checkpoint"
    plain_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="is a directory without meta.pt"):
        export_checkpoint(plain_dir, tmp_path / "exported")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train.resolve_ckpt_path(compose_cfg("train", tiny_cfg([f"ckpt_path={tmp_path / 'missing.ckpt'}"])),
                                tmp_path / "run")


def test_export_reads_a_sharded_checkpoint_directly(tmp_path):
    """export.py / evaluate.py ckpt_path= read a sharded FSDP checkpoint directory (torch.distributed.checkpoint
    shards + meta.pt) on one process, no consolidation step: the module holds exactly the saved weights."""
    from torch.distributed.checkpoint import save

    from embedders.checkpoint_io import load_trained_module

    torch.manual_seed(0)
    module = EmbeddingModule(family="qwen2_vl", config={}, lora={"r": 4, "alpha": 8},
                             optimizer={"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 1e-3})
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.01)
    ckpt = tmp_path / "last.ckpt"
    save({"state_dict": module.state_dict()}, checkpoint_id=ckpt, no_dist=True)
    import lightning

    torch.save({"hyper_parameters": dict(module.hparams), "global_step": 3,
                "pytorch-lightning_version": lightning.__version__}, ckpt / "meta.pt")
    loaded = load_trained_module(ckpt)
    expected = module.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    out = export_checkpoint(ckpt, tmp_path / "exported")
    assert not is_peft_model(Embedder.from_pretrained(out).backbone)
