"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_lr``.

A pure function of the step rather than a stateful torch scheduler, so resuming needs only the step number
(the checkpoint still records the schedule's parameters, to refuse a resume that would change it silently).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class WarmupCosine:
    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_lr: float = 0.0

    def __call__(self, step: int) -> float:
        """Learning rate for optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def state_dict(self) -> dict:
        return asdict(self)


def set_lr(optimizer, lr: float) -> None:
    # Groups may carry an ``lr_scale`` (e.g. a slower tower); the schedule sets the base.
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
