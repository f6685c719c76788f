"""Step/epoch arithmetic (docs/kohya-rules.md 2.13), stated so users can trust it."""
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


@dataclass
class PlanReport:
    """What `lorakit plan` prints: the dataset, the step arithmetic and the schedule, with no model loaded."""
    plan: Plan
    folder_lines: list[str]
    num_train_images: int      # sum of images x repeats over the train folders
    num_reg_images: int        # the same over the reg folders, before balancing
    num_reg_samples: int       # reg samples per epoch after balancing
    warmup_steps: int
    t_max_suggestion: int      # CosineAnnealingLR T_max for one decay over the run
    warnings: list[str]

    def lines(self, cfg: TrainConfig) -> list[str]:
        p = self.plan
        ga, bs = cfg.gradient_accumulation_steps, cfg.train_batch_size
        out = list(self.folder_lines)
        out += [
            f"samples per epoch: {p.samples_per_epoch} ({self.num_train_images} train + {self.num_reg_samples} reg)",
            f"batches per epoch: {p.batches_per_epoch} (batch size {bs})",
            f"optimizer steps per epoch: {p.steps_per_epoch} (gradient accumulation {ga})",
            f"total optimizer steps: {p.total_steps} over {p.epochs} epoch(s); decided by {p.decided_by}",
            f"warmup steps: {self.warmup_steps}",
            f"schedule: {cfg.lr_scheduler_type or cfg.lr_scheduler}"
            + (f" {cfg.lr_scheduler_args}" if cfg.lr_scheduler_type else ""),
            f"T_max for one cosine decay over the run (CosineAnnealingLR): {self.t_max_suggestion}",
        ]
        stop = text_encoder_stop_step(cfg, p.total_steps)
        if stop is not None and cfg.resolved_text_encoder_lr() > 0:
            out.append(f"text encoder trained for the first {stop} of {p.total_steps} steps "
                       f"(stop_text_encoder_training {cfg.stop_text_encoder_training}%)")
        out += [f"warning: {w}" for w in self.warnings]
        return out


def plan_for_config(cfg: TrainConfig, index=None, num_processes: int = 1) -> PlanReport:
    """Scan the folders (or use `index`) and work out every number of the run; loads no model."""
    from ..data.dataset import TrainDataset
    from ..data.folders import scan_config
    from ..optim.schedulers import scheduler_warnings, warmup_steps_for

    if index is None:
        index = scan_config(cfg)
    dataset = TrainDataset.from_config(cfg, index)
    plan = make_plan(cfg, len(dataset), dataset.num_batches_per_epoch(cfg.train_batch_size), num_processes)
    check_scheduler(cfg, plan.total_steps)
    warnings = list(index.warnings) + scheduler_warnings(cfg, plan.total_steps)
    return PlanReport(plan, index.describe(), index.num_train_images, index.num_reg_images,
                      index.num_reg_samples, warmup_steps_for(cfg.lr_warmup_steps, plan.total_steps),
                      plan.total_steps, warnings)


def check_scheduler(cfg: TrainConfig, total_steps: int | None = None, steps: int = 3) -> None:
    """Build the run's schedule on a one-number optimizer and take its first steps, so arguments it
    cannot run with (CosineAnnealingLR T_max=0 divides by zero at step 1) are a ConfigError before
    any model loads, not a crash after."""
    import torch

    from ..errors import ConfigError
    from ..optim.optimizers import adafactor_relative_step
    from ..optim.schedulers import build_scheduler, warmup_steps_for

    if adafactor_relative_step(cfg):  # Adafactor's own schedule: nothing to check
        return
    total = total_steps or cfg.max_train_steps or DEFAULT_STEPS
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.learning_rate or 1.0)
    try:
        sched = build_scheduler(opt, cfg.lr_scheduler, total, warmup_steps_for(cfg.lr_warmup_steps, total), cfg=cfg)
        for _ in range(min(steps, total)):
            opt.step()
            sched.step()
    except ConfigError:
        raise
    except Exception as e:  # what the scheduler raises for arguments it cannot use
        key = "lr_scheduler_args" if cfg.lr_scheduler_type else "lr_scheduler"
        args = f" {cfg.lr_scheduler_args}" if cfg.lr_scheduler_type else ""
        raise ConfigError(f"the schedule {cfg.lr_scheduler_type or cfg.lr_scheduler}{args} fails at its first steps: "
                          f"{type(e).__name__}: {e}", key=key,
                          fix="fix the scheduler arguments (e.g. T_max must be at least 1; `lorakit plan` prints "
                              "the T_max of one decay over the run)") from None


def text_encoder_stop_step(cfg: TrainConfig, total_steps: int) -> int | None:
    """The optimizer step from which the text encoder no longer trains: the kohya GUI turns
    its percentage N into ceil(total_steps / 100 * N) steps (train_db then trains the text
    encoder while global_step < that). None: no stop (0; -1 never trains it: lr 0)."""
    n = cfg.stop_text_encoder_training
    return math.ceil(total_steps / 100 * n) if n > 0 else None
