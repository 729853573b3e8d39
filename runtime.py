"""Glue shared by the entry points (train.py, evaluate.py, mine.py): Hydra resolvers for run names
and W&B groups, rank detection before Lightning starts, and instantiation of loggers/callbacks."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

#: Overrides that configure where/how a job runs rather than what it trains: left out of job names.
_NAME_SKIP_PREFIXES = ("hydra.", "paths.", "bundled.", "callbacks.", "logger", "trainer.enable_progress_bar",
                       "trainer.log_every_n_steps", "evaluate_", "save_embedder", "eval.", "eval_data.max_rows")


def short_overrides(override_dirname: str, max_len: int = 120) -> str:
    """A job name from its overrides: infrastructure keys and path-valued overrides dropped (a '/' would
    nest directories), truncated. The complete list is in the job's .hydra/overrides.yaml."""
    kept = []
    for item in override_dirname.split(","):
        key, _, value = item.partition("=")
        if "/" in value or key.lstrip("+~").startswith(_NAME_SKIP_PREFIXES):
            continue
        kept.append(item)
    name = ",".join(kept)
    return name[:max_len] if name else "job"


def _run_name(default: str) -> str:
    """The overrides of a multirun job (readable, unique within the sweep), else `default`."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return default
    hc = HydraConfig.get()
    if str(hc.mode) != "RunMode.MULTIRUN":
        return default
    return short_overrides(hc.job.override_dirname)


def _run_group(default: str) -> str:
    """One W&B group per multirun sweep (its directory name), else `default`."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized() and str(HydraConfig.get().mode) == "RunMode.MULTIRUN":
        return f"{default}-{Path(HydraConfig.get().sweep.dir).name}"
    return default


def register_resolvers() -> None:
    for name, fn in (("embedlab_run_name", _run_name), ("embedlab_run_group", _run_group),
                     ("embedlab_short_overrides", short_overrides)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


def is_launcher_rank_zero() -> bool:
    """True in the process that launched the run (not in DDP children or non-zero SLURM tasks)."""
    return all(int(os.environ.get(v, "0")) == 0 for v in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def wandb_run_id(cfg: DictConfig, output_dir: Path) -> None:
    """Keep one W&B run per output directory: a resumed (or requeued) run logs into the same run."""
    if OmegaConf.select(cfg, "logger.wandb") is None or OmegaConf.select(cfg, "logger.wandb.id"):
        return
    id_file = output_dir / "wandb_id.txt"
    if id_file.exists():
        run_id = id_file.read_text().strip()
    else:
        run_id = uuid.uuid4().hex[:12]
        output_dir.mkdir(parents=True, exist_ok=True)
        if is_launcher_rank_zero():
            id_file.write_text(run_id + "\n")
    with open_dict(cfg):
        cfg.logger.wandb.id = run_id
        cfg.logger.wandb.resume = "allow"


def instantiate_group(cfg: DictConfig | None) -> list:
    """Instantiate every entry with a `_target_` of a config group (callbacks, logger)."""
    return [instantiate(c) for c in (cfg or {}).values() if c is not None and "_target_" in c]


def finish_loggers(loggers, status: str = "success") -> None:
    """Finalize loggers and end W&B runs, so the next job of an in-process multirun gets its own run."""
    for lg in loggers:
        lg.finalize(status)
        if type(lg).__name__ == "WandbLogger":
            import wandb

            if wandb.run is not None:
                wandb.finish()


def adapt_cfg_with_multirun(argv: list[str]) -> list[str]:
    """`-m … --cfg …`: Hydra refuses the pair, but users want to see a sweep's configuration (its launcher
    above all). Rewrite it to the first job of the sweep, in multirun mode, and say so on stderr."""
    import sys

    multirun = {"-m", "--multirun"}
    cfg_flags = {"-c", "--cfg"}
    if not (multirun & set(argv)) or not (cfg_flags & set(argv) or any(a.startswith("--cfg=") for a in argv)):
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out, skip_next = [argv[0]], False
    for i, arg in enumerate(argv[1:], start=1):
        if skip_next:
            out.append(arg)
            skip_next = False
            continue
        if arg in multirun:
            continue
        if arg in cfg_flags or arg in ("-p", "--package"):
            out.append(arg)
            skip_next = i + 1 < len(argv)
            continue
        if arg.startswith("-") or "=" not in arg:
            out.append(arg)
            continue
        (override,) = parser.parse_overrides([arg])
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            out.append(f"{override.get_key_element()}={first}")
        else:
            out.append(arg)
    print("note: --cfg with --multirun shows the configuration of the sweep's first job (in multirun mode)",
          file=sys.stderr)
    return [out[0], "hydra.mode=MULTIRUN", *out[1:]]
