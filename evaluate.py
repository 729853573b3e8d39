"""Score an embedding model with the MMEB protocol:
`python evaluate.py embedder_dir=DIR`, `python evaluate.py ckpt_path=CKPT`, or zero-shot
`python evaluate.py model=<config> [model.path=<hub id or dir>] [prompt=hierarchical]`.
`devices=N` shards the encoding over N processes (GPUs, or CPU processes with device=cpu).
Writes results.json and results.md to the run directory and prints the table (evaluation/job.py); one live
evaluation per run directory, refusals exit 2."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from embedders.source_checks import check_embedder_source
from operations.hydra_app import (  # also registers the Hydra resolvers the configs use
    adapt_cfg_with_multirun,
    print_help_and_exit,
    quote_path_arguments,
    refuse_bad_command,
)
from operations.process_group import leave_process_group_at_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    leave_process_group_at_exit()  # a gloo group left to the exit can abort a finished rank (any launcher)
    source_given = bool(cfg.get("embedder_dir") or cfg.get("ckpt_path"))  # it brings its own model config
    refuse_bad_command(cfg, ("logger",) if source_given else ("model", "logger"), check_embedder_source)
    from evaluation.job import (
        evaluate_in_run_dir,  # torch, Lightning, transformers: only for a command that runs
    )

    return evaluate_in_run_dir(cfg)


if __name__ == "__main__":
    print_help_and_exit(sys.argv, "evaluate.py", __doc__)
    sys.argv = adapt_cfg_with_multirun(quote_path_arguments(sys.argv))
    main()
