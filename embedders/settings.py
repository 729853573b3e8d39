"""Rules on the model and strategy config that need no model: checked where they apply and, before torch is even
imported, by the training checks (training/checks.py) so that a bad command line is refused in seconds."""

from __future__ import annotations


def check_gradcache_config(chunk, batch_size: int | None = None, accumulate: int = 1) -> int | None:
    """`model.gradcache.chunk_size` checked against the batch it splits; returns it (None: GradCache off)."""
    if chunk is None:
        return None
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"model.gradcache.chunk_size must be a positive integer or null, got {chunk!r}")
    if accumulate != 1:
        raise ValueError(f"GradCache (model.gradcache.chunk_size={chunk}) with trainer.accumulate_grad_batches="
                         f"{accumulate}: GradCache already gives a large batch at fixed memory; raise "
                         "data.batch_size instead, or turn GradCache off to accumulate")
    if batch_size is not None and chunk > batch_size:
        raise ValueError(f"model.gradcache.chunk_size={chunk} is larger than data.batch_size={batch_size}: a chunk "
                         "must split the batch; lower the chunk size or raise the batch size")
    return chunk


#: The strategy every FSDP run goes through (embedders/strategies.py: FSDP2 through Lightning's ModelParallelStrategy).
FSDP2_TARGET = "embedders.strategies.FSDP2Strategy"


def refuse_true_precision(precision) -> None:
    """`*-true` precisions cast the whole module, buffers included, to half precision after the model is built:
    no fp32 master weights, RoPE `inv_freq` in bf16. Refused under FSDP, with what to use instead; so is `16-mixed`
    (`16` in Lightning's shorthand), which needs a sharded gradient scaler."""
    if str(precision) in ("bf16-true", "16-true"):
        raise ValueError(
            f"trainer.precision={precision} under FSDP casts every weight and buffer to half precision (no fp32 "
            "master weights; RoPE's inv_freq rounded, so training sees other positions than evaluation): use "
            "trainer.precision=bf16-mixed (bf16 compute, fp32 master weights; model.dtype=bfloat16 keeps frozen "
            "weights in bf16), or model.trainable_dtype=bfloat16 for pure bf16 trainable weights (warns)")
    if str(precision) in ("16-mixed", "16"):
        raise ValueError(f"trainer.precision={precision} under FSDP needs a sharded gradient scaler, which this "
                         "strategy does not provide: use trainer.precision=bf16-mixed")
