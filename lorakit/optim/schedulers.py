"""Learning-rate schedules as multipliers of each group's lr (kohya-semantics.md 2.14).

Stepped once per optimizer step, never per micro-step. Written as plain
lambdas so that the formulas in the reference are visible and testable.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def lr_lambda(name: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    T, W = max(1, total_steps), max(0, warmup_steps)

    def warm(s: int) -> float | None:
        return s / W if s < W else None

    if name == "constant":
        return lambda s: 1.0
    if name == "constant_with_warmup":
        return lambda s: w if (w := warm(s)) is not None else 1.0
    if name == "cosine":
        def cosine(s: int) -> float:
            if (w := warm(s)) is not None:
                return w
            p = (s - W) / max(1, T - W)
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * p)))
        return cosine
    raise ValueError(f"unknown lr_scheduler {name}")


def warmup_steps_for(value: float, total_steps: int) -> int:
    """lr_warmup_steps below 1 is a fraction of the total (kohya_ss' percent / 100)."""
    return int(round(value * total_steps)) if 0 < value < 1 else int(value)


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int,
                    warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(name, total_steps, warmup_steps))
