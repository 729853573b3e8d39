"""Model merging (embedders/merging.py, `python export.py --merge`): merged weights are the weighted average, a
merge of a model with itself is that model, LoRA runs average their adapters' deltas, incompatible models are
refused by name, and the merged directory is an ordinary Embedder."""

from __future__ import annotations

import json

import pytest
import torch

import export
from embedders import Embedder
from embedders.merging import IncompatibleModelsError, merge_embedders

CONFIG = {"text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                   "num_key_value_heads": 2}, "vision": {"depth": 1, "embed_dim": 32, "num_heads": 2}}
IMAGE = {"min_pixels": 56 * 56, "max_pixels": 56 * 56}


def tiny(seed: int, **kw) -> Embedder:
    torch.manual_seed(seed)
    return Embedder.build("qwen2_vl", config=kw.pop("config", CONFIG), image=IMAGE, **kw)


def test_merged_weights_are_the_weighted_average():
    a, b = tiny(0), tiny(1)
    merged = merge_embedders([a, b], [0.3, 0.7], ["a", "b"])
    sa, sb, sm = a.backbone.state_dict(), b.backbone.state_dict(), merged.backbone.state_dict()
    assert set(sm) == set(sa)
    averaged = 0
    for key, value in sm.items():
        if torch.equal(sa[key], sb[key]):
            assert torch.equal(value, sa[key])
            continue
        want = 0.3 * sa[key].double() + 0.7 * sb[key].double()
        assert value.dtype == sa[key].dtype
        assert torch.allclose(value.double(), want, rtol=1e-6, atol=1e-7), key
        averaged += 1
    assert averaged > 10
    texts = ["a red circle", "a blue square"]
    emb = merged.encode(texts)
    assert not torch.allclose(emb, a.encode(texts)) and not torch.allclose(emb, b.encode(texts))
    assert merged.spec() == a.spec()


def test_merge_with_itself_is_that_model():
    a = tiny(0)
    for weights in ([0.5, 0.5], [0.3, 0.7], [0.1, 0.2, 0.7]):
        merged = merge_embedders([a] * len(weights), weights)
        assert all(torch.equal(v, a.backbone.state_dict()[k]) for k, v in merged.backbone.state_dict().items())
    texts = ["a red circle"]
    assert torch.equal(merged.encode(texts), a.encode(texts))


def test_lora_runs_average_their_adapter_deltas():
    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    runs = [tiny(0, lora=lora), tiny(0, lora=lora)]
    g = torch.Generator().manual_seed(5)
    for run in runs:  # two "trained" adapters on one base: random A and B
        for name, p in run.backbone.named_parameters():
            if "lora_" in name:
                p.data = torch.randn(p.shape, generator=g) * 0.1
    merged = merge_embedders(runs, [0.25, 0.75]).backbone.state_dict()
    base = runs[0].backbone.get_base_model()
    checked = 0
    for name, module in base.named_modules():
        if not hasattr(module, "lora_A"):
            continue
        deltas = []
        for run in runs:
            m = run.backbone.get_base_model().get_submodule(name)
            deltas.append(m.scaling["default"] * (m.lora_B["default"].weight @ m.lora_A["default"].weight))
        want = module.base_layer.weight.double() + 0.25 * deltas[0].double() + 0.75 * deltas[1].double()
        assert torch.allclose(merged[f"{name}.weight"].double(), want, rtol=1e-5, atol=1e-6), name
        checked += 1
    assert checked > 0
    # weights no adapter touches are the base's, exactly
    plain = {k: v for k, v in base.state_dict().items() if "lora_" not in k and "base_layer" not in k}
    assert plain and all(torch.equal(merged[k], v) for k, v in plain.items())


def test_incompatible_models_are_refused_by_name():
    a = tiny(0)
    with pytest.raises(IncompatibleModelsError, match="cannot merge other into first: their prompt differs"):
        merge_embedders([a, tiny(1, prompt="hierarchical")], [0.5, 0.5], ["first", "other"])
    bigger = {**CONFIG, "text": {**CONFIG["text"], "intermediate_size": 256}}
    with pytest.raises(IncompatibleModelsError, match="architectures differ.*intermediate_size"):
        merge_embedders([a, tiny(1, config=bigger)], [0.5, 0.5], ["first", "other"])
    with pytest.raises(IncompatibleModelsError, match="pooling differs"):
        merge_embedders([a, tiny(1, pooling="mean")], [0.5, 0.5], ["first", "other"])
    with pytest.raises(ValueError, match="sum to 1"):
        merge_embedders([a, a], [0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per model"):
        merge_embedders([a, a], [1.0])


def test_cli_writes_an_embedder_directory(tmp_path, capsys):
    a, b = tiny(0), tiny(1)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    out = tmp_path / "merged"
    rc = export.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "0.5,0.5", "--out", str(out)])
    assert rc == 0 and "evaluate.py embedder_dir=" in capsys.readouterr().out
    loaded = Embedder.from_pretrained(out)
    in_memory = merge_embedders([Embedder.from_pretrained(tmp_path / "a"), Embedder.from_pretrained(tmp_path / "b")],
                                [0.5, 0.5])
    texts = ["a green triangle on the left"]
    assert torch.allclose(loaded.encode(texts), in_memory.encode(texts), atol=1e-6)
    assert json.loads((out / "merge.json").read_text())["weights"] == [0.5, 0.5]
    assert export.main(["--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--weights", "0.5,0.6",
                        "--out", str(tmp_path / "bad")]) == 2
    assert "sum to" in capsys.readouterr().err
