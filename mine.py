"""Mine hard negatives with an embedding model (zero-shot by default, hierarchical prompt):

    python mine.py                                     # SaHa cluster files for `python train.py sampler=saha`
    python mine.py mining.method=negatives             # a dataset with mined negatives for
                                                       #   `python train.py data.source=<out_dir>`
    python mine.py embedder_dir=DIR | ckpt_path=CKPT | model=… model.path=…   # which embedder mines

Rows are read exactly as training reads them (the same `data` config through the DataModule). Output goes
to `mining.out_dir`, by default `<paths.data_dir>/mined/<source name>/<split>` (SaHa; where `sampler=saha`
looks) or `…/<split>/negatives` (negatives). Up-to-date outputs are skipped unless `mining.force=true`.
Outputs mined with other settings (or another embedder, or from other rows) are never replaced silently:
SaHa cluster files are refused (sampler=saha reads a fixed place: write elsewhere with mining.out_dir, or
mining.force=true), mined negatives go to a directory beside the old one (`negatives-<settings hash>`; an
explicit mining.out_dir is refused instead).
"""

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


@hydra.main(version_base="1.3", config_path="conf", config_name="mine")
def main(cfg: DictConfig) -> None:
    leave_process_group_at_exit()  # a gloo group left to the exit can abort a finished rank (any launcher)
    source_given = bool(cfg.get("embedder_dir") or cfg.get("ckpt_path"))  # it brings its own model config
    refuse_bad_command(cfg, ("data",) if source_given else ("model", "data"), check_embedder_source)
    from mining.job import run  # torch, Lightning, transformers: only for a command that runs

    run(cfg)


if __name__ == "__main__":
    print_help_and_exit(sys.argv, "mine.py", __doc__)
    sys.argv = adapt_cfg_with_multirun(quote_path_arguments(sys.argv))
    main()
