"""Learning-rate schedules as pure functions of the step, so resuming needs nothing but the step."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Learning rate at optimizer step ``s`` (0-based).

    Args:
        base_lr: peak learning rate (already scaled to the global batch).
        kind: "step_exponential" (×``decay_rate`` every ``decay_epochs``, staircase, as in EfficientNet),
            "cosine" (to 0 at ``total_steps``), "multistep" (×``decay_rate`` at each epoch in ``milestones``) or
            "constant".
        steps_per_epoch: optimizer steps in one epoch.
        total_steps: planned optimizer steps of the whole run.
        warmup_steps: linear warm-up from ``warmup_start`` · base_lr.
    """

    base_lr: float
    kind: str
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int = 0
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    milestones: tuple[float, ...] = ()
    warmup_start: float = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            t = (step + 1) / self.warmup_steps
            return self.base_lr * (self.warmup_start + (1 - self.warmup_start) * t)
        epoch = step / max(1, self.steps_per_epoch)
        if self.kind == "step_exponential":
            return self.base_lr * self.decay_rate ** math.floor(epoch / self.decay_epochs)
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.base_lr * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "multistep":
            return self.base_lr * self.decay_rate ** sum(epoch >= m for m in self.milestones)
        if self.kind == "constant":
            return self.base_lr
        raise ValueError(f"unknown schedule {self.kind!r}")
