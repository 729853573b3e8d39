"""Learning-rate schedules with linear warmup: linear decay, cosine decay or constant."""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LambdaLR

KINDS = ("linear", "cosine", "constant")


def lr_factor(step: int, total_steps: int, kind: str, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """Multiplier of the base LR after `step` optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if kind == "linear":
        decay = 1.0 - progress
    elif kind == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {KINDS}")
    return min_ratio + (1.0 - min_ratio) * decay


def warmup_schedule(optimizer, total_steps: int, kind: str = "linear", warmup_steps: int | None = None,
                    warmup_ratio: float | None = None, min_lr_ratio: float = 0.0) -> LambdaLR:
    if kind not in KINDS:
        raise ValueError(f"scheduler kind must be one of {KINDS}, got {kind!r}")
    if warmup_steps is not None and warmup_ratio is not None:
        raise ValueError("set scheduler.warmup_steps or scheduler.warmup_ratio, not both")
    warm = int(warmup_steps) if warmup_steps is not None else int(round((warmup_ratio or 0.0) * total_steps))
    return LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, kind, warm, min_lr_ratio))
