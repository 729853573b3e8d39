"""Train an embedding model: `python train.py [experiment=…] [group=option …] [key=value …]`.

Composes the config, seeds, builds the LightningModule (backbone + pooling + loss), the
DataModule and the Trainer, fits, saves the final Embedder, and scores it (and, by default, the
untrained model) on the configured eval datasets.

The run directory holds one live run (a lock), records every attempt's config, and continues a run
as it was with `python train.py resume=<run dir>` (operations/). SIGTERM/Ctrl-C save a checkpoint at
the current step and exit non-zero with the resume command.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runtime import (
    adapt_cfg_with_multirun,
    finish_loggers,
    instantiate_group,
    is_launcher_rank_zero,
    quiet_known_noise,
    refuse_missing_resume,
    resume_command,
    wandb_run_id,
)

if TYPE_CHECKING:
    import lightning as L

log = logging.getLogger("embedlab.train")


class RefusedToStart(ValueError):
    """A configuration that this run refuses before doing any work."""


def release_device_memory(device) -> None:
    """Hand the evaluation's cached activations back before training allocates on the same GPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def score_on_all_ranks(trainer, embedder, cfg: DictConfig, label: str, output_dir: Path, loggers, log_prefix: str,
                       shared: bool) -> dict:
    """Score `embedder` on cfg.eval_data. `shared` (more than one rank, each holding the whole model): every rank
    calls this and encodes its shard of the unique items, the sharding of `evaluate.py devices=N`, so the results
    equal one process's; rank 0 prints, writes and logs. Otherwise the calling rank scores alone."""
    from evaluation.runner import build_suite, score

    strategy = trainer.strategy
    if shared and not trainer.is_global_zero:
        strategy.barrier("eval_suite")  # rank 0 reads (on first use: generates) the eval data first
    suite = build_suite(cfg.eval_data)
    if shared and trainer.is_global_zero:
        strategy.barrier("eval_suite")
    results = score(embedder.to(strategy.root_device), suite, cfg.eval, label, output_dir,
                    loggers if trainer.is_global_zero else [], log_prefix, distributed=shared)
    release_device_memory(strategy.root_device)
    return results


def validate_config(cfg: DictConfig) -> None:
    """Refuse misconfigurations before anything expensive starts: value types (every key of every
    `_target_` node), then combinations (RefusedToStart, a ValueError)."""
    try:
        _validate_config(cfg)
    except ValueError as e:
        if isinstance(e, RefusedToStart):
            raise
        raise RefusedToStart(str(e)) from None


def _validate_config(cfg: DictConfig) -> None:
    from operations.config_types import ConfigTypeError, check_config_types

    check_config_types(cfg, keys=("model", "loss", "data", "sampler", "trainer", "callbacks", "logger"))
    for key, kind in (("seed", int), ("evaluate_before", bool), ("evaluate_after", bool), ("save_embedder", bool),
                      ("resume_allow_changes", bool)):
        value = cfg.get(key)
        if value is not None and (type(value) is not kind):
            raise ConfigTypeError(f"config values of the wrong type (nothing was run):\n  {key} must be "
                                  f"{kind.__name__}, got {value!r} ({type(value).__name__})")
    for key in ("trainer.max_steps", "trainer.max_epochs"):
        if OmegaConf.select(cfg, key) == 0:
            raise ValueError(f"{key}=0: this run would make no optimizer step; give a positive number (or -1 for "
                             "no limit on that count)")
    limit = OmegaConf.select(cfg, "trainer.limit_train_batches")
    if limit is not None and limit == 0:
        raise ValueError("trainer.limit_train_batches=0: this run would make no optimizer step")
    chunk = OmegaConf.select(cfg, "model.gradcache.chunk_size")
    accumulate = OmegaConf.select(cfg, "trainer.accumulate_grad_batches", default=1) or 1
    batch = OmegaConf.select(cfg, "data.batch_size")
    if chunk is not None:
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
            raise ValueError(f"model.gradcache.chunk_size must be a positive integer or null, got {chunk!r}")
        if accumulate != 1:
            raise ValueError(f"GradCache (model.gradcache.chunk_size={chunk}) with trainer.accumulate_grad_batches="
                             f"{accumulate}: GradCache already gives a large batch at fixed memory; raise "
                             "data.batch_size instead, or turn GradCache off to accumulate")
        if batch is not None and chunk > batch:
            raise ValueError(f"model.gradcache.chunk_size={chunk} is larger than data.batch_size={batch}: a chunk "
                             "must split the batch; lower the chunk size or raise the batch size")
    strategy = OmegaConf.select(cfg, "trainer.strategy")
    target = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    if "fsdp" in target.lower():
        from embedders.strategies import FSDP2_TARGET, refuse_true_precision

        if target != FSDP2_TARGET:
            raise ValueError(f"trainer.strategy._target_={target}: FSDP runs through {FSDP2_TARGET} (FSDP2, every "
                             "rank running the same units whatever its rows); use trainer=fsdp (GPUs) or "
                             "trainer=fsdp_cpu (CPU ranks)")
        refuse_true_precision(OmegaConf.select(cfg, "trainer.precision", default="32-true"))
        accel = OmegaConf.select(cfg, "trainer.accelerator")
        import torch

        if accel in ("gpu", "cuda") and not torch.cuda.is_available():
            raise ValueError("trainer=fsdp needs GPUs and none is visible here; FSDP on CPU ranks (gloo) is "
                             "trainer=fsdp_cpu trainer.devices=N")


def check_training_steps(trainer: L.Trainer, datamodule) -> int:
    """Refuse, before any work, a run whose data gives no optimizer step; returns the steps per epoch."""
    datamodule.setup("fit")
    sampler = datamodule.build_train_sampler(rank=0, world_size=trainer.world_size)
    batches = len(sampler)
    limit = trainer.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float) and limit < 1.0:
        batches = int(batches * limit)
    accumulate = max(1, int(trainer.accumulate_grad_batches))
    steps = -(-batches // accumulate)  # the last partial accumulation of an epoch still steps
    if steps > 0:
        return steps
    pairs = len(datamodule.train_pairs)
    per_subset: dict[str, int] = {}
    for p in datamodule.train_pairs:
        per_subset[p.subset] = per_subset.get(p.subset, 0) + 1
    world = trainer.world_size
    raise RefusedToStart(
        f"this run would make no optimizer step: {pairs} training pairs ({per_subset}, after holding out "
        f"data.val_per_subset={datamodule.val_per_subset} per subset) in batches of data.batch_size="
        f"{datamodule.batch_size} with data.drop_last={datamodule.drop_last} over {world} rank(s) give {batches} "
        f"batch(es) per epoch (trainer.limit_train_batches={limit}). Lower data.batch_size (at most "
        f"{max(1, pairs // world)}), set data.drop_last=false, or use more data")


def build_trainer(cfg: DictConfig, module, callbacks, loggers) -> L.Trainer:
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if module.chunk_size is not None:
        # GradCache optimises manually: it applies the clipping Lightning would otherwise apply.
        clip = tcfg.pop("gradient_clip_val", None)
        algorithm = tcfg.pop("gradient_clip_algorithm", "norm") or "norm"
        if clip:
            module.manual_gradient_clip = (float(clip), algorithm)
    from lightning.pytorch.callbacks import ModelCheckpoint

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
    from embedders.checkpoint_io import UnreadableCheckpointError, checkpoint_step, newest_readable_checkpoint

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
    from embedders.checkpoint_io import checkpoint_metadata

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
    from operations.interrupt import GracefulStop, RunInterrupted, StopRequested

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
    import lightning as L
    from lightning.pytorch.callbacks import LambdaCallback

    from embedders.shipping import write_run_card
    from embedders.strategies import standalone_module
    from operations.metrics import ResumableCSVLogger, append_summary
    from operations.progress import step_progress_bar

    L.seed_everything(cfg.seed, workers=True)
    wandb_run_id(cfg, output_dir)
    loss = instantiate(cfg.loss)
    module = instantiate(cfg.model, loss=loss, prompt=OmegaConf.to_container(cfg.prompt, resolve=True),
                         _convert_="partial")
    datamodule = instantiate(cfg.data, sampler=instantiate(cfg.sampler) if cfg.get("sampler") else None,
                             _convert_="partial")
    datamodule.set_input_builder(module.embedder.input_builder, module.chunk_size)
    callbacks, loggers = instantiate_group(cfg.get("callbacks")), instantiate_group(cfg.get("logger"))
    outcome: dict = {"before": None, "after": None, "chance": None}
    evaluate = bool(cfg.get("eval_data"))
    ckpt = resolve_ckpt_path(cfg, output_dir)
    if evaluate and cfg.evaluate_before and ckpt is None:
        def score_untrained(trainer, pl_module, stage):
            outcome["before"] = score_on_all_ranks(trainer, pl_module.embedder, cfg, "untrained",
                                                   output_dir / "eval_untrained", loggers, "eval_untrained",
                                                   shared=trainer.world_size > 1)

        # In the trainer's setup hook: every rank is in the process group and still holds the whole untrained model.
        callbacks.append(LambdaCallback(setup=score_untrained))
    callbacks.append(stop.callback())
    if OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True):
        callbacks.append(step_progress_bar())
    trainer = build_trainer(cfg, module, callbacks, loggers)
    check_training_steps(trainer, datamodule)
    if ckpt is not None and is_launcher_rank_zero():
        from embedders.checkpoint_io import checkpoint_step

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
    write_run_card(output_dir, cfg)  # embedder/README.md: training record + the final MMEB table (embedders/shipping.py)
    finish_loggers(loggers)
    return outcome


def _refusals() -> tuple[type[BaseException], ...]:
    from operations.config_types import ConfigTypeError
    from operations.lock import RunLockedError
    from operations.record import ResumeRefused

    return (RefusedToStart, ConfigTypeError, RunLockedError, ResumeRefused)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from operations.interrupt import RunInterrupted
    from operations.lock import RunLock
    from operations.record import record_attempt, resolve_attempt, restore_hydra_files

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
                from embedders.checkpoint_io import clean_orphans

                record_attempt(run_dir, attempt, hydra_dir)
                recorded = True
                clean_orphans(run_dir / "checkpoints")
            outcome = run(cfg, resume_command("train.py", run_dir), validated=True)
    except RunInterrupted as e:
        sys.exit(e.exit_code)  # the message (what was saved, the resume command) is already logged
    except BaseException as e:
        if writer and not recorded:
            restore_hydra_files(run_dir, hydra_dir)  # Hydra wrote this refused command line into .hydra/
        if isinstance(e, _refusals()):  # refused before any work: the message says what to do, no traceback
            log.error("refused: %s", e)
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        raise
    after = outcome.get("after")
    return after["overall"] if after else None  # the value Hydra sweepers optimise


if __name__ == "__main__":
    from operations.record import pin_recorded_choices

    refuse_missing_resume(sys.argv)
    sys.argv = pin_recorded_choices(adapt_cfg_with_multirun(sys.argv))
    main()
