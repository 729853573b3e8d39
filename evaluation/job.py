"""The evaluation job that `python evaluate.py` runs: load the one model the command names, shard the encoding over
`devices=N` processes (Lightning Fabric), score the eval suite with the MMEB protocol and write the results.
`evaluate_in_run_dir` wraps it as the command: one live evaluation per run directory (a lock), refusals before any
work exit 2 with the message alone, a full disk exits 1 naming the file, and a run that wrote nothing leaves no run
directory behind."""

from __future__ import annotations

import logging
import shutil
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from datamodules.images import apply_image_limits
from embedders.loading import load_embedder, pick_device
from embedders.source_checks import ModelSourceError, check_embedder_source
from operations.config_types import ConfigTypeError, check_config_types
from operations.disk_space import DiskFullError
from operations.hydra_app import finish_loggers, instantiate_group, is_launcher_rank_zero, quiet_known_noise
from operations.lock import LOCK_FILE, RunLock, RunLockedError

from .runner import build_suite, score

log = logging.getLogger("embedlab.evaluate")


def launch(cfg: DictConfig):
    """(fabric or None, device): with `devices > 1`, Lightning Fabric starts one DDP process per device
    (NCCL on GPUs, gloo on CPU; under Hydra the workers share this run directory) and each encodes a shard."""
    devices = cfg.get("devices", 1)
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 1:
        raise ValueError(f"devices must be a positive integer (processes to shard the encoding over), got {devices!r}")
    device = pick_device(cfg.device)
    if devices == 1:
        return None, device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"devices={devices} shards over CPU processes or CUDA GPUs; device={cfg.device} is neither")
    if device.type == "cuda" and devices > torch.cuda.device_count():
        raise ValueError(f"devices={devices}, but only {torch.cuda.device_count()} CUDA device(s) are visible")
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=device.type, devices=devices, strategy="ddp")
    fabric.launch()
    return fabric, fabric.device


def run(cfg: DictConfig) -> dict:
    quiet_known_noise()
    check_embedder_source(cfg)
    source_given = bool(cfg.get("embedder_dir") or cfg.get("ckpt_path"))
    check_config_types(cfg, keys=("logger",) if source_given else ("model", "logger"))
    apply_image_limits(cfg)
    fabric, device = launch(cfg)
    L.seed_everything(cfg.seed, workers=True)  # a randomly initialised (config) backbone: same weights everywhere
    embedder = load_embedder(cfg).truncated(cfg.eval.get("dim")).to(device)  # eval.dim=N: Matryoshka prefix
    if not source_given and OmegaConf.select(cfg, "model.path") is None:
        log.warning("scoring a randomly initialised %s (model.path is null): the untrained baseline. Score a trained "
                    "model with embedder_dir=<run>/embedder or ckpt_path=<run>/checkpoints/last.ckpt",
                    OmegaConf.select(cfg, "model.family"))
    with fabric.rank_zero_first() if fabric else nullcontext():
        suite = build_suite(cfg.eval_data, embedder.prompt)
    main_rank = fabric is None or fabric.global_rank == 0
    loggers = instantiate_group(cfg.get("logger")) if main_rank else []
    label = cfg.get("embedder_dir") or cfg.get("ckpt_path") or OmegaConf.select(cfg, "model.path") or cfg.run_name
    results = score(embedder, suite, cfg.eval, str(label), Path(cfg.paths.output_dir), loggers, "eval",
                    distributed=fabric is not None)
    finish_loggers(loggers)
    if main_rank:
        log.info("results written to %s", cfg.paths.output_dir)
    return results


#: Refused before any work: the message says what to do (exit 2, no traceback).
REFUSALS = (RunLockedError, ModelSourceError, ConfigTypeError)


@contextmanager
def kept_hydra_files(hydra_dir: Path | None):
    """Put this run's `.hydra/*.yaml` back when it ends: Hydra writes a refused second command's config there before
    the lock can refuse it, and the directory's record must describe the run that wrote its results."""
    saved = {}
    if hydra_dir is not None and hydra_dir.is_dir():
        saved = {p: p.read_bytes() for p in hydra_dir.glob("*.yaml")}
    try:
        yield
    finally:
        for path, data in saved.items():
            try:
                if not path.is_file() or path.read_bytes() != data:
                    path.write_bytes(data)
            except OSError:
                pass


def remove_if_nothing_written(run_dir: Path, hydra_dir: Path | None, job_log: str) -> bool:
    """Remove `run_dir` when it holds only what Hydra and the lock put there (its `.hydra/`, the job's log `job_log`,
    `run.lock`; no score or result file): a failed evaluation leaves no empty run directory behind (its error is on
    the terminal). Returns whether it was removed."""
    own = {LOCK_FILE, job_log} | ({hydra_dir.name} if hydra_dir is not None else set())
    try:
        entries = {p.name for p in run_dir.iterdir()}
    except OSError:
        return False
    if not entries <= own:
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def evaluate_in_run_dir(cfg: DictConfig) -> float:
    """What `python evaluate.py` runs inside its Hydra app: one live evaluation per run directory (a second one is
    refused naming the holder; sharded runs lock in the launching process only), the job, and exit codes — 2 for a
    refusal before any work (the message, no traceback), 1 for a full disk (the file and the space it needs). A run
    that fails before writing anything removes its run directory and says so. Returns the Overall score."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    hydra_dir = run_dir / hc.output_subdir if hc.output_subdir else None
    launcher = is_launcher_rank_zero()  # Fabric's worker processes share the launcher's directory and lock
    locked = False
    try:
        with RunLock(run_dir) if launcher else nullcontext():
            locked = launcher
            with kept_hydra_files(hydra_dir) if launcher else nullcontext():
                return run(cfg)["overall"]
    except BaseException as e:
        if launcher and locked and remove_if_nothing_written(run_dir, hydra_dir, f"{hc.job.name}.log"):
            log.error("the evaluation wrote nothing, so its run directory %s was removed", run_dir)
        if isinstance(e, RunLockedError):
            print(f"error: {e} (Hydra rewrote its .hydra/ files for this refused command; the running evaluation "
                  "puts its own back when it ends)", file=sys.stderr, flush=True)
            sys.exit(2)
        if isinstance(e, REFUSALS):
            log.error("refused: %s", e)
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        if isinstance(e, DiskFullError):
            log.error("%s", e)
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
        raise
