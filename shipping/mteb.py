"""MTEB / MIEB adapter (mteb 2.x): an embedlab Embedder as an `mteb` encoder — texts, images and image+text inputs,
queries on the query side and documents on the target side of the Embedder's prompt — and MMEB-format eval datasets
(the bundled ones, or MMEB-eval) as local mteb retrieval tasks that re-rank each row's candidates.

    python -m shipping.mteb EMBEDDER_DIR --benchmark "MIEB(lite)"       # the public MIEB-lite run (downloads)
    python -m shipping.mteb EMBEDDER_DIR --tasks ShapeVQA ShapeT2I --mmeb-source data/bundled/eval \
        --image-root data/bundled/eval                                            # local MMEB-format tasks, offline
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from datamodules.images import ImageLoader
from embedders import Embedder
from evaluation.engine import load_eval_suite

log = logging.getLogger(__name__)


class EmbedlabEncoder(AbsEncoder):
    """An `Embedder` behind mteb's encoder protocol.

    mteb hands batches of `text` and/or `image` columns and a prompt type: queries (and inputs without a prompt type,
    as in classification and clustering; `default_side`) are encoded on the query side, documents on the target side.
    When mteb supplies an instruction for the task (task metadata or `prompts_dict`), it is put in front of the text as
    `instruction_format` says, the way MMEB texts carry theirs; MMEB-format texts already hold their instruction.
    """

    def __init__(self, embedder, name: str | None = None, batch_size: int = 32, default_side: str = "query",
                 instruction_format: str = "{instruction}\n{text}", prompts_dict: dict[str, str] | None = None):
        if default_side not in ("query", "target"):
            raise ValueError(f"default_side must be 'query' or 'target', got {default_side!r}")
        self.embedder = embedder
        self.batch_size = int(batch_size)
        self.default_side = default_side
        self.instruction_format = instruction_format
        self.prompts_dict = prompts_dict
        self.mteb_model_meta = model_meta(embedder, name)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> EmbedlabEncoder:
        return cls(Embedder.from_pretrained(directory), name=kwargs.pop("name", None) or _name(directory), **kwargs)

    def encode(self, inputs, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        side = {PromptType.query: "query", PromptType.document: "target"}.get(prompt_type, self.default_side)
        instruction = self.get_instruction(task_metadata, prompt_type) if self.prompts_dict or task_metadata.prompt \
            else ""
        texts, images = [], []
        for batch in inputs:
            n = len(batch["text"] if "text" in batch else batch["image"])
            batch_texts = list(batch["text"]) if "text" in batch else [""] * n
            batch_images = list(batch["image"]) if "image" in batch else [None] * n
            texts += [self.instruction_format.format(instruction=instruction, text=t) if instruction else t
                      for t in batch_texts]
            images += batch_images
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        has_images = any(im is not None for im in images)
        if has_images and not self.embedder.family.takes_images:
            raise ValueError(f"task {task_metadata.name} has image inputs, but the {self.embedder.family.name} model "
                             "takes none; choose text tasks")
        return self.embedder.encode(texts, images if has_images else None, side=side,
                                    batch_size=self.batch_size).numpy()


def _name(directory) -> str:
    path = Path(directory)
    return f"embedlab/{path.resolve().name}"


def model_meta(embedder, name: str | None = None) -> ModelMeta:
    """mteb's description of the model (no loader: the encoder object is handed to `mteb.evaluate` directly)."""
    n_params = sum(p.numel() for p in embedder.parameters())
    config = embedder.backbone.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    dim = embedder.truncate_dim or int(getattr(text, "hidden_size", 0)) or None
    return ModelMeta(
        loader=None, name=name or f"embedlab/{embedder.family.name}", revision=None, release_date=None,
        languages=None, n_parameters=n_params, memory_usage_mb=round(n_params * 4 / 2**20, 1),
        max_tokens=float(embedder.input_builder.max_length), embed_dim=dim, license=None, open_weights=True,
        public_training_code=None, public_training_data=None, framework=["PyTorch"],
        similarity_fn_name=ScoringFunction.COSINE if embedder.normalize else ScoringFunction.DOT_PRODUCT,
        use_instructions=True, training_datasets=None,
        modalities=["text", "image"] if embedder.family.takes_images else ["text"],
    )


# ============================================================================ MMEB datasets as mteb tasks
def mmeb_task(dataset) -> AbsTaskRetrieval:
    """An MMEB-format eval dataset (`evaluation.mmeb.EvalDataset`) as an mteb retrieval task that re-ranks each row's
    candidates (`top_ranked`), the ground truth (index 0) being the one relevant document: mteb's precision_at_1 is
    then MMEB's Precision@1 (as a fraction). Identical candidates (same text and image) are one document."""
    from datasets import Dataset

    loader = ImageLoader(dataset.image_root)
    q_kind = _kind([r.query for r in dataset.rows], dataset.name, "queries")
    d_kind = _kind([c for r in dataset.rows for c in r.candidates], dataset.name, "candidates")
    doc_ids: dict[tuple, str] = {}
    corpus: dict[str, list] = {"id": [], "text": [], **({"image": []} if d_kind == "it" else {})}
    queries: dict[str, list] = {"id": [], "text": [], **({"image": []} if q_kind == "it" else {})}
    relevant, ranked = {}, {}
    for row in dataset.rows:
        qid = f"q{row.row}"
        queries["id"].append(qid)
        queries["text"].append(row.query.text)
        if q_kind == "it":
            queries["image"].append(loader.load(row.query.image, dataset.name, row.row, "qry_img_path"))
        ids = []
        for cand in row.candidates:
            key = (cand.text, cand.image)
            if key not in doc_ids:
                doc_ids[key] = f"d{len(doc_ids)}"
                corpus["id"].append(doc_ids[key])
                corpus["text"].append(cand.text)
                if d_kind == "it":
                    corpus["image"].append(loader.load(cand.image, dataset.name, row.row, "tgt_img_path"))
            ids.append(doc_ids[key])
        relevant[qid] = {ids[0]: 1}
        ranked[qid] = list(dict.fromkeys(ids))
    split = RetrievalSplitData(queries=Dataset.from_dict(queries), corpus=Dataset.from_dict(corpus),
                               relevant_docs=relevant, top_ranked=ranked)

    metadata = TaskMetadata(
        name=dataset.name, description=f"MMEB-format {dataset.meta_task} dataset {dataset.name} ({dataset.split}), "
        "candidates re-ranked per row", reference=None, dataset={"path": "embedlab/local", "revision": "local"},
        type="Any2AnyRetrieval", category=f"{q_kind}2{d_kind}", modalities=["text", "image"] if "it" in
        (q_kind, d_kind) else ["text"], eval_splits=["test"], eval_langs=["eng-Latn"], main_score="precision_at_1",
        date=None, domains=None, task_subtypes=None, license=None, annotations_creators=None, dialect=None,
        sample_creation=None, bibtex_citation=None)

    class MMEBTask(AbsTaskRetrieval):
        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            self.dataset = {"default": {"test": split}}
            self.data_loaded = True

    MMEBTask.metadata = metadata
    MMEBTask.__name__ = f"MMEB_{dataset.name}"
    return MMEBTask()


def _kind(items, dataset: str, side: str) -> str:
    with_image = sum(1 for i in items if i.image)
    if with_image == 0:
        return "t"
    if with_image == len(items):
        return "it"
    raise ValueError(f"dataset {dataset}: {with_image} of {len(items)} {side} have an image; an mteb task needs one "
                     "modality per side (split the dataset, or evaluate it with evaluate.py)")


# ================================================================================================= CLI
def run(embedder_dir: str, benchmark: str | None = None, tasks: Sequence[str] = (), mmeb_source: str | None = None,
        image_root: str | None = None, output: str | None = None, batch_size: int = 32):
    import mteb

    encoder = EmbedlabEncoder.from_pretrained(embedder_dir, batch_size=batch_size)
    if mmeb_source:
        if not tasks:
            raise ValueError("--mmeb-source needs --tasks: the dataset names to read from it")
        datasets = {t: {"meta_task": "Retrieval", "split": "IND"} for t in tasks}
        selected = [mmeb_task(ds) for ds in load_eval_suite(mmeb_source, datasets, "test", image_root or mmeb_source)]
    elif benchmark:
        selected = mteb.get_benchmark(benchmark).tasks
    else:
        selected = mteb.get_tasks(tasks=list(tasks))
    cache = mteb.ResultCache(cache_path=output) if output else None
    kwargs = {"cache": cache} if cache is not None else {"cache": None}
    return mteb.evaluate(encoder, selected, encode_kwargs={"batch_size": batch_size}, **kwargs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("embedder_dir")
    ap.add_argument("--benchmark", default=None, help='an mteb benchmark, e.g. "MIEB(lite)" (downloads its data)')
    ap.add_argument("--tasks", nargs="*", default=[], help="mteb task names, or dataset names with --mmeb-source")
    ap.add_argument("--mmeb-source", default=None, help="an MMEB-format eval source (local dir or hub id): its "
                                                        "--tasks datasets run as local mteb tasks")
    ap.add_argument("--image-root", default=None, help="image root of --mmeb-source (default: the source)")
    ap.add_argument("--output", default=None, help="mteb result cache folder (default: no cache, print only)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    if not (args.benchmark or args.tasks):
        ap.error("give --benchmark or --tasks")
    results = run(args.embedder_dir, args.benchmark, args.tasks, args.mmeb_source, args.image_root, args.output,
                  args.batch_size)
    for task_result in results.task_results:
        for split, scores in task_result.scores.items():
            for entry in scores:
                print(f"{task_result.task_name} [{split}/{entry.get('hf_subset', 'default')}] "
                      f"main score {entry['main_score']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
