# embedlab — every target sets itself up (a virtual environment in .venv) on a fresh machine.
# On machines without an NVIDIA GPU the CPU build of torch (a "+cpu" local version: a wheelhouse/find-links
# copy, else PyTorch's CPU index) is installed first, so the package's torch requirement is already met and
# pip never pulls the multi-GB CUDA wheels.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embedlab-installed
CPU_TORCH ?= torch==2.13.0+cpu
CPU_TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
ARGS ?=
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_DISABLE_PROGRESS_BARS ?= 1

.PHONY: help setup train evaluate compare test test-all bench gpu-check lint sweep ablation ablation-real recipe-cpu readme-figures clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  pass Hydra overrides with ARGS='…', e.g. make train ARGS='loss=hardness_weighted loss.alpha=9'"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1; then \
		echo "NVIDIA GPU found: torch comes from the package index with CUDA"; \
	else \
		echo "no NVIDIA GPU: installing the CPU build of torch ($(CPU_TORCH))"; \
		$(PY) -m pip install -q "$(CPU_TORCH)" \
		|| $(PY) -m pip install -q "$(CPU_TORCH)" --extra-index-url $(CPU_TORCH_INDEX); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

setup: $(STAMP) ## create .venv and install embedlab with its dev tools

train: $(STAMP) ## train the default model (tiny Qwen2-VL, bundled data, CPU) and score it
	$(PY) train.py $(ARGS)

evaluate: $(STAMP) ## score a model: make evaluate ARGS='embedder_dir=logs/train/runs/…/embedder'
	$(PY) evaluate.py $(ARGS)

compare: $(STAMP) ## is B better than A? paired CIs: make compare ARGS='<eval dir A> <eval dir B> [--out cmp.json]'
	$(PY) compare.py $(ARGS)

test: $(STAMP) ## fast test suite (what CI runs)
	$(PY) -m pytest -q $(ARGS)

test-all: $(STAMP) ## every test, slow ones included
	$(PY) -m pytest -q -m "" $(ARGS)

bench: $(STAMP) ## benchmarks: measured ratios side by side (ARGS=--quick: a smoke run, no target judged)
	$(PY) benchmarks/run_all.py $(ARGS)

gpu-check: $(STAMP) ## on a GPU machine: bf16 full FT / LoRA / FSDP / GradCache steps, host syncs, throughput (< 8 min, H100)
	$(PY) benchmarks/gpu_check.py $(ARGS)

sweep: $(STAMP) ## SLURM sweep of the two losses: make sweep ARGS='hydra.launcher.partition=gpu …'
	$(PY) train.py -m hydra/launcher=slurm trainer=slurm loss=infonce,hardness_weighted $(ARGS)

ablation: $(STAMP) ## loss × sampler × 3 seeds on the bundled data; table, paired CIs + plot (CPU, ~45 min)
	$(PY) benchmarks/ablation.py $(ARGS)

# At most ~75 min per command on a 2-core CPU (docs/evidence.md): the default runs the zero-shot model and two loss arms
# of the random-batch arm into logs/ablation_real/grid; five more commands (ARGS='--batches … --losses … --sweep
# logs/ablation_real/grid') add the rest of the grid to the same sweep, then --report aggregates it.
ABLATION_REAL_FIRST ?= --batches random --losses infonce_sym,hw9 --sweep logs/ablation_real/grid
ablation-real: $(STAMP) ## MiniLM on docstrings: losses × batch arms × 5 seeds, one part per command; paired CIs + plots (docs/evidence.md)
	$(PY) benchmarks/ablation_real.py $(or $(ARGS),$(ABLATION_REAL_FIRST))

RECIPE_DIR ?= logs/recipe_cpu
recipe-cpu: $(STAMP) ## the leaders' recipe on CPU, tiny models: contrastive → teacher scores → distil → merge → score (docs/recipes.md)
	$(PY) train.py experiment=qwen3vl_embedding_recipe_cpu recipe_dir=$(RECIPE_DIR) hydra.run.dir=$(RECIPE_DIR)/1_contrastive $(ARGS)
	$(PY) mine.py mining.method=teacher embedder_dir=$(RECIPE_DIR)/1_contrastive/embedder mining.out_dir=$(RECIPE_DIR)/teacher hydra.run.dir=$(RECIPE_DIR)/teacher_run
	$(PY) train.py experiment=qwen3vl_embedding_recipe_distill_cpu recipe_dir=$(RECIPE_DIR) hydra.run.dir=$(RECIPE_DIR)/2_distill $(ARGS)
	$(PY) export.py --merge $(RECIPE_DIR)/1_contrastive/embedder $(RECIPE_DIR)/2_distill/embedder --weights 0.5,0.5 --out $(RECIPE_DIR)/3_merged
	$(PY) evaluate.py embedder_dir=$(RECIPE_DIR)/3_merged hydra.run.dir=$(RECIPE_DIR)/3_merged_eval

readme-figures: $(STAMP) ## rerun the default run (python train.py) and write its tables into README.md
	$(PY) benchmarks/default_run.py --update-readme

lint: $(STAMP) ## ruff
	$(PY) -m ruff check .

clean: ## remove run outputs (keeps .venv and data)
	rm -rf logs outputs multirun .pytest_cache
