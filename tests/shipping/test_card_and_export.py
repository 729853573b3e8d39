"""The model card written at the end of training and by export.py (its MMEB table equals the run's results.json,
its transformers snippet runs and gives embedlab's vectors), export.py's LoRA message, and `--push-to-hub` through
huggingface_hub with the Hub API replaced at its boundary."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import export

EXPECTED_CITATIONS = ("2410.05160", "1807.03748", "2503.04812", "2205.13147", "2106.09685", "1908.10084")


def _front_matter(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, "the card has no YAML front matter"
    return yaml.safe_load(match.group(1))


def _table_values(card: str, name: str) -> tuple[list[str], dict[str, str]]:
    """The summary row's cells and each dataset row's Precision@1 cell, as printed in the card."""
    summary = next(line for line in card.splitlines() if line.startswith(f"| {name} |"))
    rows = {}
    for line in card.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 5 and cells[1] in ("Classification", "VQA", "Retrieval", "Grounding"):   # then Notes
            rows[cells[0]] = cells[4]
    return [c.strip() for c in summary.strip("|").split("|")][1:], rows


def _check_table(card: str, results: dict, name: str) -> None:
    summary, rows = _table_values(card, name)
    meta = results["meta_tasks"]
    expected = [meta.get(m) for m in ("Classification", "VQA", "Retrieval", "Grounding")]
    expected += [results["IND"], results["OOD"], results["overall"]]
    assert summary == ["–" if v is None else f"{v:.1f}" for v in expected]
    assert rows == {n: f"{d['precision@1']:.1f}" for n, d in results["datasets"].items()}


def test_card_written_after_training(trained_run, card_snippet):
    from sentence_transformers import SentenceTransformer

    from embedders import Embedder
    from shipping.usage import EXAMPLE_DOCUMENTS, EXAMPLE_QUERY_TEXT

    run_dir, outcome = trained_run
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    card = (run_dir / "embedder" / "README.md").read_text()
    meta = _front_matter(card)
    assert meta["library_name"] == "sentence-transformers" and meta["license"]
    assert "matryoshka" in meta["tags"] and "multimodal-embedding" in meta["tags"]
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["Overall"] == round(results["overall"], 2) == round(outcome["after"]["overall"], 2)
    _check_table(card, results, "embedder")
    for expected in ("ShapeCls, ShapeT2I", "`HardnessWeightedInfoNCE`", "α 0.5", "Matryoshka dims 32, 128",
                     "LoRA r 4, alpha 8", "3 optimizer steps", "`plain`", str(run_dir.parent / "base"),
                     "SentenceTransformer(", "AutoModel.from_pretrained", "runner=\"pooling\"", "MIEB(lite)"):
        assert expected in card, expected
    for arxiv in EXPECTED_CITATIONS:
        assert arxiv in card, arxiv
    # Trained with the defaults: the card claims parity, states no difference, and the card's plain-transformers
    # code and sentence-transformers give embedlab's vectors.
    assert "Differences from embedlab" not in card and "(tested to 1e-5)" in card
    ns = card_snippet(run_dir / "embedder")
    embedder = Embedder.from_pretrained(run_dir / "embedder")
    image = Image.new("RGB", (84, 84), "red")
    query = embedder.encode([EXAMPLE_QUERY_TEXT], images=[image], side="query")
    docs = embedder.encode(list(EXAMPLE_DOCUMENTS), side="target")
    assert (ns["query"] - query).abs().max().item() <= 1e-5
    assert (ns["docs"] - docs).abs().max().item() <= 1e-5
    st = SentenceTransformer(str(run_dir / "embedder"), device="cpu")
    st_query = st.encode_query([{"text": EXAMPLE_QUERY_TEXT, "image": image}], convert_to_tensor=True)
    assert (st_query - query).abs().max().item() <= 1e-5
    assert (st.encode_document(list(EXAMPLE_DOCUMENTS), convert_to_tensor=True) - docs).abs().max().item() <= 1e-5


def test_export_of_the_lora_checkpoint(trained_run, tmp_path, capsys, caplog):
    from sentence_transformers import SentenceTransformer

    from embedders import Embedder

    run_dir, _ = trained_run
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING", logger="embedders.saving"):
        warnings.simplefilter("always")
        assert export.main([str(run_dir / "checkpoints" / "last.ckpt"), str(tmp_path / "out")]) == 0
    assert not caplog.records   # the default prompt ships exactly: no stock-loader warning
    printed = capsys.readouterr().out
    lora_lines = [line for line in printed.splitlines() if "LoRA" in line]
    assert len(lora_lines) == 1 and f"model.path={run_dir.parent / 'base'}" in lora_lines[0], printed
    assert not [w for w in caught if "Found keys" in str(w.message)], "Lightning's missing-keys list is back"
    out = tmp_path / "out"
    texts = ["a red circle on the left", "<|image_1|>\nRepresent the given image."]
    images = [None, Image.new("RGB", (84, 84), "blue")]
    trained = Embedder.from_pretrained(run_dir / "embedder")
    exported = Embedder.from_pretrained(out)
    assert torch.allclose(exported.encode(texts, images), trained.encode(texts, images), atol=1e-5)
    card = (out / "README.md").read_text()
    _check_table(card, json.loads((run_dir / "eval" / "results.json").read_text()), "out")
    assert "LoRA r 4" in card
    st = torch.from_numpy(SentenceTransformer(str(out), device="cpu").encode_query(["a red circle on the left"]))
    assert (st - exported.encode(texts[:1], side="query")).abs().max().item() <= 1e-5


class FakeHfApi:
    """huggingface_hub.HfApi replaced at its boundary: records the calls and what the folder held when uploaded."""

    instances: list[FakeHfApi] = []

    def __init__(self, token=None, **kwargs):
        self.token, self.calls = token, []
        FakeHfApi.instances.append(self)

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, "repo_type": repo_type, "private": private,
                                           "exist_ok": exist_ok}))
        return type("RepoUrl", (), {"url": f"https://huggingface.co/{repo_id}"})()

    def upload_folder(self, repo_id, folder_path, repo_type=None, commit_message=None, **kwargs):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        card = (Path(folder_path) / "README.md").read_text()
        self.calls.append(("upload_folder", {"repo_id": repo_id, "repo_type": repo_type, "files": files,
                                             "card": card}))


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.instances = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_to_hub(trained_run, tmp_path, monkeypatch, fake_hub, capsys):
    run_dir, _ = trained_run
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert export.main([ckpt, str(tmp_path / "pushed"), "--push-to-hub", "my-org/tiny-embedder", "--private"]) == 0
    (api,) = fake_hub.instances
    assert api.token == "hf_test_token"
    (create, create_args), (upload, upload_args) = api.calls
    assert (create, upload) == ("create_repo", "upload_folder")
    assert create_args == {"repo_id": "my-org/tiny-embedder", "repo_type": "model", "private": True, "exist_ok": True}
    assert upload_args["repo_id"] == "my-org/tiny-embedder" and upload_args["repo_type"] == "model"
    for name in ("README.md", "config.json", "model.safetensors", "modules.json", "embedder.json",
                 "config_sentence_transformers.json", "1_Pooling/config.json", "chat_template.jinja"):
        assert name in upload_args["files"], name
    assert 'SentenceTransformer("my-org/tiny-embedder")' in upload_args["card"]
    assert "https://huggingface.co/my-org/tiny-embedder" in capsys.readouterr().out


def test_push_to_hub_refused_without_token(trained_run, tmp_path, monkeypatch, fake_hub, capsys):
    run_dir, _ = trained_run
    monkeypatch.delenv("HF_TOKEN", raising=False)
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    assert export.main([ckpt, str(tmp_path / "refused"), "--push-to-hub", "my-org/x"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert not fake_hub.instances and not (tmp_path / "refused").exists()  # refused before exporting anything
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    assert export.main([ckpt, str(tmp_path / "bad"), "--push-to-hub", "not a repo id"]) == 2
    assert "ORG/NAME" in capsys.readouterr().err and not fake_hub.instances
