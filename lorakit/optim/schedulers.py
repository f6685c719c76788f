"""Learning-rate schedules (docs/kohya-rules.md 2.14), stepped once per optimizer step, never per micro-step.

The named schedules are multipliers of each group's lr, written as plain functions so
that the formulas are visible and testable (they are diffusers' get_scheduler formulas,
which sd-scripts uses). T = total optimizer steps, W = warmup steps, s = step (0-based):

    warmup (s < W):        s / W                               (all but constant)
    p = (s - W) / max(1, T - W)
    constant:              1
    constant_with_warmup:  1
    linear:                max(0, (T - s) / max(1, T - W))
    cosine:                max(0, 0.5 (1 + cos(pi p)))
    cosine_with_restarts:  0 if p >= 1 else max(0, 0.5 (1 + cos(pi ((n p) mod 1))))   n = num_cycles
    polynomial:            ((lr0 - lr_end) (1 - p)^power + lr_end) / lr0,  lr_end / lr0 after T
                           lr0 = learning_rate, lr_end = 1e-7

`lr_scheduler_type` builds any torch.optim.lr_scheduler class (or module.Class) with
`lr_scheduler_args` instead; warmup is then an error, as in sd-scripts.
"""
from __future__ import annotations

import importlib
import math
from typing import Any, Callable

import torch

from ..errors import ConfigError, closest

SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
POLY_LR_END = 1e-7  # diffusers' default lr_end for polynomial


def lr_lambda(name: str, total_steps: int, warmup_steps: int, *, num_cycles: int = 1, power: float = 1.0,
              lr_init: float = 1.0) -> Callable[[int], float]:
    T, W = max(1, total_steps), max(0, warmup_steps)

    def warm(s: int) -> float | None:
        return s / W if s < W else None

    def progress(s: int) -> float:
        return (s - W) / max(1, T - W)

    def after_warmup(f: Callable[[int], float]) -> Callable[[int], float]:
        return lambda s: w if (w := warm(s)) is not None else f(s)

    if name == "constant":
        return lambda s: 1.0
    if name == "constant_with_warmup":
        return after_warmup(lambda s: 1.0)
    if name == "linear":
        return after_warmup(lambda s: max(0.0, (T - s) / max(1, T - W)))
    if name == "cosine":
        return after_warmup(lambda s: max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress(s)))))
    if name == "cosine_with_restarts":
        def restarts(s: int) -> float:
            p = progress(s)
            if p >= 1.0:
                return 0.0
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * p) % 1.0))))
        return after_warmup(restarts)
    if name == "polynomial":
        if lr_init < POLY_LR_END:
            raise ConfigError(f"polynomial needs learning_rate above {POLY_LR_END}", key="learning_rate")

        def poly(s: int) -> float:
            if s > T:
                return POLY_LR_END / lr_init
            return ((lr_init - POLY_LR_END) * (1.0 - progress(s)) ** power + POLY_LR_END) / lr_init
        return after_warmup(poly)
    raise ConfigError(f"unknown lr_scheduler '{name}'", key="lr_scheduler", fix=f"use one of {', '.join(SCHEDULES)}")


def warmup_steps_for(value: float, total_steps: int) -> int:
    """lr_warmup_steps below 1 is a fraction of the total (kohya_ss' percent / 100)."""
    return int(round(value * total_steps)) if 0 < value < 1 else int(value)


def unknown_scheduler_type(type_name: str) -> ConfigError | None:
    """The error for an lr_scheduler_type that is no torch.optim.lr_scheduler class (a "did you mean"),
    else None; a dotted module.Class is looked up when the schedule is built."""
    sched = torch.optim.lr_scheduler
    if "." in type_name or isinstance(getattr(sched, type_name, None), type):
        return None
    guess = closest(type_name, [k for k, v in vars(sched).items() if isinstance(v, type) and k[0] != "_"])
    return ConfigError(f"torch.optim.lr_scheduler has no scheduler '{type_name}'", key="lr_scheduler_type",
                       fix=(f"did you mean '{guess}'? " if guess else "") + "use a torch.optim.lr_scheduler name "
                           "(e.g. CosineAnnealingLR) or module.Class")


def scheduler_class(type_name: str) -> type:
    """kohya's lr_scheduler_type: a torch.optim.lr_scheduler name, or a dotted module.Class."""
    error = unknown_scheduler_type(type_name)
    if error is not None:
        raise error
    if "." in type_name:
        mod_name, _, cls_name = type_name.rpartition(".")
    else:
        mod_name, cls_name = "torch.optim.lr_scheduler", type_name
    try:
        return getattr(importlib.import_module(mod_name), cls_name)
    except (ImportError, AttributeError):
        raise ConfigError(f"cannot find the scheduler '{type_name}'", key="lr_scheduler_type",
                          fix="use a torch.optim.lr_scheduler name (e.g. CosineAnnealingLR) or module.Class") from None


def scheduler_warnings(cfg: Any, total_steps: int) -> list[str]:
    """Warnings the loop should show: a periodic CosineAnnealingLR whose T_max is not the run's length."""
    out = []
    if cfg.lr_scheduler_type and cfg.lr_scheduler_type.rpartition(".")[2] == "CosineAnnealingLR":
        t_max = cfg.lr_scheduler_args.get("T_max")
        if isinstance(t_max, (int, float)) and t_max > 0 and abs(t_max - total_steps) > 0.1 * total_steps:
            cycles = total_steps / t_max
            shape = (f"it is periodic: the lr falls to eta_min and rises again {cycles:.1f} times"
                     if t_max < total_steps else "the lr never gets down to eta_min")
            out.append(f"CosineAnnealingLR T_max={t_max:g} counts optimizer steps but this run has {total_steps}; "
                       f"{shape}. Guides that set T_max to the epoch count meant one decay over the run: "
                       f"set lr_scheduler_args T_max={total_steps}")
    return out


def build_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int,
                    cfg: Any = None) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule for `optimizer`; `cfg` (default: the config build_optimizer stored on the
    optimizer) supplies num_cycles, power, lr_scheduler_type/args and the Adafactor case."""
    if cfg is None:
        cfg = getattr(optimizer, "lorakit_config", None)
    if cfg is not None:
        from .optimizers import adafactor_relative_step

        if adafactor_relative_step(cfg):
            from transformers.optimization import AdafactorSchedule  # kohya's "adafactor:<lr>"
            return AdafactorSchedule(optimizer, cfg.learning_rate)
        if cfg.lr_scheduler_type:
            if warmup_steps:
                raise ConfigError(f"{cfg.lr_scheduler_type} does not take warmup steps ({warmup_steps} given)",
                                  key="lr_warmup_steps", fix="set lr_warmup_steps (kohya_ss: lr_warmup) to 0")
            cls = scheduler_class(cfg.lr_scheduler_type)
            try:
                return cls(optimizer, **cfg.lr_scheduler_args)
            except TypeError as e:
                raise ConfigError(f"{cfg.lr_scheduler_type} rejects lr_scheduler_args {cfg.lr_scheduler_args}: {e}",
                                  key="lr_scheduler_args", fix="check the argument names") from None
        fn = lr_lambda(name, total_steps, warmup_steps, num_cycles=cfg.lr_scheduler_num_cycles,
                       power=cfg.lr_scheduler_power, lr_init=cfg.learning_rate)
    else:
        fn = lr_lambda(name, total_steps, warmup_steps, lr_init=optimizer.defaults.get("lr") or 1.0)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
