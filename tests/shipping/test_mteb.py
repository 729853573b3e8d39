"""An embedlab Embedder as an mteb model: mteb's own evaluator runs, offline, local retrieval tasks built from the
bundled MMEB-format eval sets (image+text queries against texts, texts against image+text candidates), and its
precision_at_1 equals embedlab's MMEB Precision@1 on the same rows (an independent implementation of the scoring)."""

from __future__ import annotations

import pytest

mteb = pytest.importorskip("mteb")

DATASETS = {"ShapeVQA": {"meta_task": "VQA", "split": "IND"}, "ShapeT2I": {"meta_task": "Retrieval", "split": "IND"}}


def test_mteb_runs_local_mmeb_tasks_and_agrees_with_embedlab(trained_run, bundled_root, tmp_path):
    from embedders import Embedder
    from evaluation.engine import load_eval_suite
    from evaluation.mmeb import evaluate_embedder
    from shipping.mteb import EmbedlabEncoder, mmeb_task

    run_dir, _ = trained_run
    embedder = Embedder.from_pretrained(run_dir / "embedder")
    suite = load_eval_suite(str(bundled_root / "eval"), DATASETS, "test", str(bundled_root / "eval"))
    tasks = [mmeb_task(ds) for ds in suite]
    assert [t.metadata.category for t in tasks] == ["it2t", "t2it"]
    encoder = EmbedlabEncoder(embedder, name="embedlab/test", batch_size=8)
    result = mteb.evaluate(encoder, tasks, cache=None, show_progress_bar=False)
    ours = evaluate_embedder(embedder, suite, batch_size=8, progress=False)
    scored = {r.task_name: r.scores["test"][0] for r in result.task_results}
    assert set(scored) == set(DATASETS)
    for ds in suite:
        got = scored[ds.name]
        assert got["main_score"] == pytest.approx(got["precision_at_1"])
        # mteb rounds its scores to 5 decimals (mteb/_evaluators/retrieval_metrics.py): 1/12 comes back as 0.08333.
        assert got["precision_at_1"] == round(ours["datasets"][ds.name]["precision@1"] / 100, 5)
        # Precision@1 of a 3-step model can be 0 for both: the reciprocal rank of the ground truth is a finer check.
        want = _mrr_at_10(embedder, ds)
        assert 0 < want < 1
        assert got["mrr_at_10"] == pytest.approx(want, abs=1e-4)


def _mrr_at_10(embedder, ds) -> float:
    """Mean reciprocal rank (cut at 10) of the ground truth among each row's distinct candidates, by brute force."""
    from datamodules.images import ImageLoader

    loader = ImageLoader(ds.image_root)

    def image(item):
        return loader.load(item.image) if item.image else None

    total = 0.0
    for row in ds.rows:
        cands = list(dict.fromkeys(row.candidates))
        q = embedder.encode([row.query.text], [image(row.query)], side="query")[0]
        c = embedder.encode([x.text for x in cands], [image(x) for x in cands], side="target")
        rank = 1 + int((c @ q > (c @ q)[0]).sum())
        total += 1.0 / rank if rank <= 10 else 0.0
    return total / len(ds.rows)


def test_encoder_sides_and_instructions(tiny_embedder):
    """Queries go to the query side, documents to the target side; an mteb instruction is put in front of the text."""
    import torch
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import PromptType
    from PIL import Image

    from shipping.mteb import EmbedlabEncoder

    embedder = tiny_embedder("qwen2_vl", "hierarchical")
    encoder = EmbedlabEncoder(embedder, name="embedlab/tiny", prompts_dict={"ShapeQA": {"query": "Answer the question"}})
    meta = TaskMetadata(name="ShapeQA", description="d", dataset={"path": "x", "revision": "x"},
                        type="Any2AnyRetrieval", category="it2t", modalities=["text", "image"],
                        eval_langs=["eng-Latn"], main_score="precision_at_1")
    image = Image.new("RGB", (84, 84), "red")
    batch = [{"text": ["What color is it?"], "image": [image]}]
    query = encoder.encode(batch, task_metadata=meta, hf_split="test", hf_subset="default",
                           prompt_type=PromptType.query)
    doc = encoder.encode([{"text": ["red"]}], task_metadata=meta, hf_split="test", hf_subset="default",
                         prompt_type=PromptType.document)
    want_q = embedder.encode(["Answer the question\nWhat color is it?"], [image], side="query")
    want_d = embedder.encode(["red"], side="target")
    assert torch.allclose(torch.from_numpy(query), want_q, atol=1e-6)
    assert torch.allclose(torch.from_numpy(doc), want_d, atol=1e-6)
    assert encoder.mteb_model_meta.modalities == ["text", "image"] and encoder.mteb_model_meta.embed_dim == 128
