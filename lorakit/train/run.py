"""The state of one training run: the config, the built components and what the loop keeps between
steps. Its own module so that the stages (setup, loop, state, save, hooks, validation, settings)
can name it without importing each other."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from ..config.schema import TrainConfig
from ..events import EventBus
from .plan import Plan

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "float": torch.float32}


@dataclass
class Run:
    cfg: TrainConfig
    bus: EventBus
    accelerator: Accelerator
    seed: int
    output_dir: Path
    model: Any = None
    network: Any = None
    dataset: Any = None
    index: Any = None
    optimizer: Any = None
    scheduler: Any = None
    plan: Plan | None = None
    weight_dtype: torch.dtype = torch.float32
    overwrite: bool = False
    given_cfg: TrainConfig | None = None  # the config as given (cfg may take its ranks from network_weights)
    progress: Any = None  # state.Progress of the last finished step
    warnings: list[str] = field(default_factory=list)
    noise_settings: Any = None
    step_stats: dict = field(default_factory=dict)  # e.g. max-norm numbers of the last step
    text_cache: Any = None  # text_cache.TextCache while the text encoder is frozen
    validation: Any = None       # validation.ValidationSet, built on the first validation
    validation_last: Any = None  # (step, ValidationResult) of the last validation, reused at the same step
    memory_format: torch.memory_format = torch.preserve_format  # of the UNet's inputs (channels_last)
    te_training: bool = False        # the text encoder's adapters train in this step
    te_stop_step: int | None = None  # stop_text_encoder_training: the step from which they no longer do
    started_at: float = field(default_factory=time.time)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device
