"""Rules on the model config that need no model: checked by the LightningModule and, before torch is even imported,
by the training checks (training/checks.py) so that a bad command line is refused in seconds."""

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
