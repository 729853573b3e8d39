"""Train an embedding model: `python train.py [experiment=…] [group=option …] [key=value …]`.

Composes the config, seeds, builds the LightningModule (backbone + pooling + loss), the
DataModule and the Trainer, fits, saves the final Embedder, and scores it (and, by default, the
untrained model) on the configured eval datasets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from runtime import (
    adapt_cfg_with_multirun,
    finish_loggers,
    instantiate_group,
    wandb_run_id,
)

log = logging.getLogger("embedlab.train")


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
    """Refuse misconfigurations before anything expensive starts."""
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
        if OmegaConf.select(cfg, "callbacks.saha_refresh") is not None:
            raise ValueError("callbacks=saha_refresh is not supported under trainer=fsdp (re-mining encodes with "
                             "the embedder outside the FSDP forward, whose parameters are sharded); use trainer=ddp, "
                             "or mine between runs with mine.py")
        accel = OmegaConf.select(cfg, "trainer.accelerator")
        import torch

        if accel == "cpu" or not torch.cuda.is_available():
            raise ValueError("trainer=fsdp needs GPUs (Lightning refuses FSDP on CPU); use trainer=ddp_cpu on CPU")
        if chunk is not None:
            raise ValueError("GradCache under FSDP is not supported; use trainer=ddp with GradCache")


def build_trainer(cfg: DictConfig, module, callbacks, loggers) -> L.Trainer:
    tcfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    if module.chunk_size is not None:
        # GradCache optimises manually: it applies the clipping Lightning would otherwise apply.
        clip = tcfg.pop("gradient_clip_val", None)
        algorithm = tcfg.pop("gradient_clip_algorithm", "norm") or "norm"
        if clip:
            module.manual_gradient_clip = (float(clip), algorithm)
    strategy = tcfg.get("strategy")
    if isinstance(strategy, dict) and strategy.get("_partial_"):
        # Strategies that need the model (FSDP's wrap policy) are partials completed here.
        tcfg["strategy"] = instantiate(strategy)(module)
    return instantiate(tcfg, callbacks=callbacks, logger=loggers or False, _convert_="partial")


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        ckpt = str(last) if last.exists() else None
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


def run(cfg: DictConfig) -> dict:
    """The whole training job; returns {"before": results|None, "after": results|None, "chance": float}."""
    from lightning.pytorch.callbacks import LambdaCallback

    from embedders.shipping import write_run_card
    from embedders.strategies import standalone_module

    validate_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
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
    if evaluate and cfg.evaluate_before and resolve_ckpt_path(cfg, output_dir) is None:
        def score_untrained(trainer, pl_module, stage):
            outcome["before"] = score_on_all_ranks(trainer, pl_module.embedder, cfg, "untrained",
                                                   output_dir / "eval_untrained", loggers, "eval_untrained",
                                                   shared=trainer.world_size > 1)

        # In the trainer's setup hook: every rank is in the process group and still holds the whole untrained model.
        callbacks.append(LambdaCallback(setup=score_untrained))
    trainer = build_trainer(cfg, module, callbacks, loggers)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg, output_dir))
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
        if outcome["before"] is not None:
            summary += f"untrained {outcome['before']['overall']:.1f} | "
        summary += f"trained {outcome['after']['overall']:.1f} | chance {outcome['chance']:.1f}"
        if datamodule.skip_summary():  # rows the reference skips (or missing images with on_missing_image=skip)
            summary += "\nTraining rows skipped:\n" + datamodule.skip_summary()
        print(summary, flush=True)
        (output_dir / "summary.txt").write_text(summary + "\n")
    write_run_card(output_dir, cfg)  # embedder/README.md: training record + the final MMEB table (embedders/shipping.py)
    finish_loggers(loggers)
    return outcome


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    outcome = run(cfg)
    after = outcome.get("after")
    return after["overall"] if after else None  # the value Hydra sweepers optimise


if __name__ == "__main__":
    import sys

    sys.argv = adapt_cfg_with_multirun(sys.argv)
    main()
