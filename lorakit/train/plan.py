"""Step/epoch arithmetic (kohya-semantics.md 2.13), stated so users can trust it."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..config.schema import TrainConfig

DEFAULT_STEPS = 1600  # sd-scripts' default when neither steps nor epochs are given


@dataclass(frozen=True)
class Plan:
    samples_per_epoch: int      # images x repeats (+ balanced reg samples)
    batches_per_epoch: int      # micro-batches
    steps_per_epoch: int        # optimizer steps
    total_steps: int
    epochs: int
    decided_by: str             # which setting decided total_steps

    def describe(self) -> str:
        return (f"{self.samples_per_epoch} samples/epoch -> {self.batches_per_epoch} batches -> "
                f"{self.steps_per_epoch} optimizer steps/epoch; {self.total_steps} steps over "
                f"{self.epochs} epoch(s) ({self.decided_by})")


def make_plan(cfg: TrainConfig, samples_per_epoch: int, batches_per_epoch: int,
              num_processes: int = 1) -> Plan:
    per_epoch = max(1, math.ceil(batches_per_epoch / num_processes / cfg.gradient_accumulation_steps))
    by_epochs = cfg.max_train_epochs * per_epoch if cfg.max_train_epochs else None
    if by_epochs is not None and cfg.max_train_steps is not None:
        total = min(by_epochs, cfg.max_train_steps)
        decided = ("max_train_epochs" if by_epochs <= cfg.max_train_steps
                   else "max_train_steps (stops before max_train_epochs ends)")
    elif by_epochs is not None:
        total, decided = by_epochs, "max_train_epochs"
    elif cfg.max_train_steps is not None:
        total, decided = cfg.max_train_steps, "max_train_steps"
    else:
        total, decided = DEFAULT_STEPS, f"default {DEFAULT_STEPS} steps: set max_train_epochs or max_train_steps"
    return Plan(samples_per_epoch, batches_per_epoch, per_epoch, total,
                math.ceil(total / per_epoch), decided)
