"""Train an embedding model: `python train.py [experiment=…] [group=option …] [key=value …]`.

Composes the config and runs the training job (training/job.py): builds the LightningModule (backbone + pooling +
loss), the DataModule and the Trainer, fits, saves the final Embedder, and scores it (and, by default, the
untrained model) on the configured eval datasets.

The run directory holds one live run (a lock), records every attempt's config, and continues a run as it was with
`python train.py resume=<run dir>` (operations/). SIGTERM/Ctrl-C save a checkpoint at the current step and exit
non-zero with the resume command.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from operations.hydra_app import (
    adapt_cfg_with_multirun,
    print_help_and_exit,
    quote_path_arguments,
    refuse_bad_command,
    refuse_missing_resume,
)
from operations.process_group import leave_process_group_at_exit
from operations.record import pin_recorded_choices
from training.checks import TRAIN_KEYS, validate_config


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    leave_process_group_at_exit()  # a gloo group left to the exit can abort a finished rank (any launcher)
    if not cfg.get("resume"):  # a resume is checked against its recorded config, in the job
        refuse_bad_command(cfg, TRAIN_KEYS, lambda c: validate_config(c, static=True))
    from training.job import train_in_run_dir  # torch, Lightning, transformers: only for a command that runs

    return train_in_run_dir(cfg)


if __name__ == "__main__":
    print_help_and_exit(sys.argv, "train.py", __doc__)
    sys.argv = quote_path_arguments(sys.argv)  # a printed run directory pastes bare, whatever its name holds
    refuse_missing_resume(sys.argv)
    sys.argv = pin_recorded_choices(adapt_cfg_with_multirun(sys.argv))
    main()
