"""The training job that `python train.py` runs: build the LightningModule (backbone + pooling + loss), the
DataModule and the Trainer, fit, save the final Embedder, and score it (and, by default, the untrained model) on the
configured eval datasets. Stopped by a signal, it saves a checkpoint at the current step and raises RunInterrupted
with the resume command."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LambdaCallback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from embedders.checkpoint_io import (
    UnreadableCheckpointError,
    checkpoint_metadata,
    checkpoint_step,
    clean_orphans,
    newest_readable_checkpoint,
)
from embedders.source_checks import ModelSourceError
from embedders.strategies import standalone_module
from evaluation.online import online_callbacks
from evaluation.runner import build_suite, score
from operations.config_types import ConfigTypeError
from operations.disk_space import DiskFullError
from operations.hydra_app import (
    finish_loggers,
    instantiate_group,
    is_launcher_rank_zero,
    quiet_known_noise,
    resume_command,
    wandb_run_id,
)
from operations.interrupt import GracefulStop, RunInterrupted, StopRequested
from operations.lock import RunLock, RunLockedError
from operations.metrics import ResumableCSVLogger, append_summary
from operations.progress import step_progress_bar
from operations.record import ResumeRefused, record_attempt, resolve_attempt, restore_hydra_files
from shipping.run_card import write_run_card

from .checks import RefusedToStart, check_training_steps, validate_config

log = logging.getLogger("embedlab.train")


def release_device_memory(device) -> None:
    """Hand the evaluation's cached activations back before training allocates on the same GPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def score_on_all_ranks(trainer, embedder, cfg: DictConfig, label: str, output_dir: Path, loggers, log_prefix: str,
                       shared: bool) -> dict:
    """Score `embedder` on cfg.eval_data. `shared` (more than one rank, each holding the whole model): every rank
    calls this and encodes its shard of the unique items, the sharding of `evaluate.py devices=N`, so the results
    equal one process's; rank 0 prints, writes and logs. Otherwise the calling rank scores alone."""

    strategy = trainer.strategy
    if shared and not trainer.is_global_zero:
        strategy.barrier("eval_suite")  # rank 0 reads (on first use: generates) the eval data first
    suite = build_suite(cfg.eval_data, embedder.prompt)
    if shared and trainer.is_global_zero:
        strategy.barrier("eval_suite")
    results = score(embedder.truncated(cfg.eval.get("dim")).to(strategy.root_device), suite, cfg.eval, label, output_dir,
                    loggers if trainer.is_global_zero else [], log_prefix, distributed=shared)
    release_device_memory(strategy.root_device)
    return results


def build_trainer(cfg: DictConfig, module, callbacks, loggers) -> L.Trainer:
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if module.chunk_size is not None:
        # GradCache optimises manually: it applies the clipping Lightning would otherwise apply.
        clip = tcfg.pop("gradient_clip_val", None)
        algorithm = tcfg.pop("gradient_clip_algorithm", "norm") or "norm"
        if clip:
            module.manual_gradient_clip = (float(clip), algorithm)

    if "enable_checkpointing" not in tcfg and not any(isinstance(c, ModelCheckpoint) for c in callbacks or ()):
        # callbacks.model_checkpoint=null means no checkpoints: without this Lightning would add its default
        # ModelCheckpoint and write a full checkpoint (weights + optimizer state) into the logger's directory.
        tcfg["enable_checkpointing"] = False
        log.info("callbacks.model_checkpoint is null: no checkpoint is saved (only one when a signal stops the run), "
                 "so a finished or killed run restarts from step 0")
    strategy = tcfg.get("strategy")
    if isinstance(strategy, dict) and strategy.get("_partial_"):
        # Strategies that need the model (FSDP's wrap policy) are partials completed here.
        tcfg["strategy"] = instantiate(strategy)(module)
    return instantiate(tcfg, callbacks=callbacks, logger=loggers or False, _convert_="partial")


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    """The checkpoint to start from. `auto`: the newest readable checkpoint of the run directory (an
    unreadable one is named and skipped with a warning), or None in a fresh directory."""

    ckpt = cfg.get("ckpt_path")
    if ckpt == "auto":
        directory = output_dir / "checkpoints"
        found, skipped = newest_readable_checkpoint(directory)
        for _, reason in skipped:
            log.warning("%s; skipped", reason)
        if skipped and found is None:
            raise UnreadableCheckpointError(
                f"no readable checkpoint in {directory} to resume from (see the warnings above). Delete the "
                "unreadable files to restart this run from step 0, or pass ckpt_path=<a good checkpoint>")
        if skipped:
            log.warning("resuming from %s (step %d) instead: the steps after it run again", found,
                        checkpoint_step(found))
        ckpt = str(found) if found is not None else None
    if ckpt:
        check_checkpoint_matches(ckpt, cfg)
    return ckpt


def check_checkpoint_matches(ckpt: str, cfg: DictConfig) -> None:
    """Refuse, before training starts, a checkpoint of another backbone than the configured one."""

    # A checkpoint file, or the directory of a sharded FSDP checkpoint (its meta.pt).
    hp = checkpoint_metadata(ckpt).get("hyper_parameters", {})
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key in ("family", "path", "config", "lora"):
        if hp.get(key) != model.get(key):
            raise ValueError(f"checkpoint {ckpt} was trained with model.{key}={hp.get(key)!r}, but this run has "
                             f"model.{key}={model.get(key)!r}: resume with the same model config, or start a new run "
                             "directory (ckpt_path=null)")


def untrained_overall(outcome: dict, output_dir: Path) -> float | None:
    """This attempt's untrained figure, or the one an earlier attempt of the run wrote."""
    if outcome["before"] is not None:
        return outcome["before"]["overall"]
    path = output_dir / "eval_untrained" / "results.json"
    if path.is_file():
        return json.loads(path.read_text())["overall"]
    return None


def run(cfg: DictConfig, resume_hint: str | None = None, validated: bool = False) -> dict:
    """The whole training job; returns {"before": results|None, "after": results|None, "chance": float}.
    Raises operations.interrupt.RunInterrupted when stopped by a signal (after saving a checkpoint)."""

    quiet_known_noise()
    if not validated:
        validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    stop = GracefulStop(resume_hint or resume_command("train.py", output_dir))
    with stop:
        try:
            return _train_and_score(cfg, output_dir, stop)
        except StopRequested:  # the fit stopped on a signal, after the checkpoint of the current step was saved
            raise stop.interrupted() from None
        except RunInterrupted as e:
            log.error(e.message)
            raise


def _train_and_score(cfg: DictConfig, output_dir: Path, stop) -> dict:


    L.seed_everything(cfg.seed, workers=True)
    wandb_run_id(cfg, output_dir)
    loss = instantiate(cfg.loss)
    module = instantiate(cfg.model, loss=loss, prompt=OmegaConf.to_container(cfg.prompt, resolve=True),
                         _convert_="partial")
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler) if cfg.get("sampler") else None,
                             _convert_="partial")
    datamodule.set_input_builder(module.embedder.input_builder, module.chunk_size, module.guide_input_builder)
    callbacks, loggers = instantiate_group(cfg.get("callbacks")), instantiate_group(cfg.get("logger"))
    outcome: dict = {"before": None, "after": None, "chance": None}
    # `~eval_data` removes the eval_data group but leaves train.yaml's `eval_data.online` block: no suite, no eval.
    evaluate = any(key != "online" for key in (cfg.get("eval_data") or {}))
    online_every = OmegaConf.select(cfg, "eval_data.online.every_n_steps", default=None)
    if not evaluate and online_every:
        raise ValueError(f"eval_data.online.every_n_steps={online_every} needs an evaluation suite, but eval_data "
                         "names none (it was removed with ~eval_data): choose one, e.g. eval_data=bundled")
    ckpt = resolve_ckpt_path(cfg, output_dir)
    if evaluate and cfg.evaluate_before and ckpt is None:
        def score_untrained(trainer, pl_module, stage):
            outcome["before"] = score_on_all_ranks(trainer, pl_module.embedder, cfg, "untrained",
                                                   output_dir / "eval_untrained", loggers, "eval_untrained",
                                                   shared=trainer.world_size > 1)

        # In the trainer's setup hook: every rank is in the process group and still holds the whole untrained model.
        callbacks.append(LambdaCallback(setup=score_untrained))
    if evaluate:  # eval_data.online: a subset scored every N steps (evaluation/online.py)
        callbacks.extend(online_callbacks(OmegaConf.to_container(cfg.eval_data, resolve=True),
                                          OmegaConf.to_container(cfg.eval, resolve=True), output_dir))
    callbacks.append(stop.callback())
    if OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        callbacks.append(step_progress_bar())
    trainer = build_trainer(cfg, module, callbacks, loggers)
    check_training_steps(trainer, datamodule)
    if ckpt is not None and is_launcher_rank_zero():
        start = checkpoint_step(ckpt)
        log.info("resuming from %s (step %d)", ckpt, start)
        for lg in loggers:
            if isinstance(lg, ResumableCSVLogger):
                lg.rewind(start)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt)
    if trainer.global_step == 0:
        raise RuntimeError("training ended without a single optimizer step; nothing trained is saved or scored "
                           "(see the warnings above for why the trainer stopped)")
    final = standalone_module(trainer, module)  # under FSDP: a collective gather; an unwrapped copy on rank 0
    if trainer.is_global_zero and cfg.save_embedder:
        path = final.embedder.save_pretrained(output_dir / "embedder")
        log.info("saved the trained Embedder to %s", path)
    # Every rank holds the trained model except under FSDP (rank 0's unwrapped copy): then rank 0 scores alone.
    shared = final is module and trainer.world_size > 1
    if evaluate and cfg.evaluate_after and (shared or trainer.is_global_zero):
        # Scoring runs on the training device (Lightning moves the model back to CPU after fit).
        outcome["after"] = score_on_all_ranks(trainer, final.embedder, cfg, "trained", output_dir / "eval", loggers,
                                              "eval", shared)
        outcome["chance"] = outcome["after"]["_chance"]
    if not trainer.is_global_zero:
        return outcome
    if outcome["after"] is not None:
        summary = f"Overall on {len(outcome['after']['datasets'])} eval datasets: "
        before = untrained_overall(outcome, output_dir)
        if before is not None:
            summary += f"untrained {before:.1f} | "
        summary += f"trained {outcome['after']['overall']:.1f} | chance {outcome['chance']:.1f}"
        skips = ""
        if datamodule.skip_summary():  # rows the reference skips (or missing images with on_missing_image=skip)
            skips = "\nTraining rows skipped:\n" + datamodule.skip_summary()
        print(summary + skips, flush=True)
        append_summary(output_dir / "summary.txt", f"{summary} (step {trainer.global_step}){skips}")
    write_run_card(output_dir, cfg)  # embedder/README.md: training record + the final MMEB table (shipping/run_card.py)
    finish_loggers(loggers)
    return outcome


def _refusals() -> tuple[type[BaseException], ...]:

    return (RefusedToStart, ConfigTypeError, RunLockedError, ResumeRefused, ModelSourceError)


def _named_cause(e: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """`e`, or the error it wraps (Hydra's instantiate wraps what a constructor raises), when it is one of `kinds`."""
    while e is not None:
        if isinstance(e, kinds):
            return e
        e = e.__cause__
    return None


def train_in_run_dir(cfg: DictConfig) -> float | None:
    """What `python train.py` runs inside its Hydra app: one live run per run directory (a lock), the attempt
    recorded (a resume restores the run's config as it was), the job, and exit codes — 2 for a refusal before any
    work (message, no traceback), the signal's code when stopped. Returns the trained Overall (sweepers optimise it)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    hydra_dir = run_dir / hc.output_subdir if hc.output_subdir else None
    writer = is_launcher_rank_zero()  # DDP children and other SLURM tasks read the record, never write it
    if cfg.get("resume") and str(hc.mode) == "RunMode.MULTIRUN":
        raise ValueError("resume= continues one run: drop -m (each job of a sweep resumes by itself when requeued)")
    recorded = False
    try:
        with RunLock(run_dir) if writer else nullcontext():
            attempt = resolve_attempt(cfg, run_dir, config_name=hc.job.config_name, overrides=list(hc.overrides.task),
                                      choices=OmegaConf.to_container(hc.runtime.choices), announce=writer)
            cfg = attempt.config
            validate_config(cfg)
            if writer and OmegaConf.select(cfg, "model.scheduler") is not None and any(
                    c.key in ("trainer.max_steps", "trainer.max_epochs") for c in attempt.changes):
                log.warning("the run's length changed on resume: the LR schedule is recomputed for the new total, "
                            "so the learning rate after the resume step follows the longer schedule")
            if writer:
                record_attempt(run_dir, attempt, hydra_dir)
                recorded = True
                clean_orphans(run_dir / "checkpoints")
            outcome = run(cfg, resume_command("train.py", run_dir), validated=True)
    except RunInterrupted as e:
        sys.exit(e.exit_code)  # the message (what was saved, the resume command) is already logged
    except BaseException as e:
        if writer and not recorded:
            restore_hydra_files(run_dir, hydra_dir)  # Hydra wrote this refused command line into .hydra/
        refusal = _named_cause(e, _refusals())
        if refusal is not None:  # refused before any work: the message says what to do, no traceback
            log.error("refused: %s", refusal)
            print(f"error: {refusal}", file=sys.stderr, flush=True)
            sys.exit(2)
        disk_full = _named_cause(e, (DiskFullError,))
        if disk_full is not None:  # the message names the file and the space; earlier checkpoints are intact
            log.error("%s", disk_full)
            print(f"error: {disk_full}\nResume with:\n  {resume_command('train.py', run_dir)}", file=sys.stderr,
                  flush=True)
            sys.exit(1)
        raise
    after = outcome.get("after")
    return after["overall"] if after else None  # the value Hydra sweepers optimise


