"""One training run: the config and the components setup built (frozen), plus the few objects whose
state changes while it trains (the text encoder's training flag and cache, the validation state,
per-run caches). Progress is the loop's (state.Progress, passed to what saves it). Its own module so
that the stages (setup, loop, state, save, hooks, validation, settings) can name it without
importing each other."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator

from ..config.schema import TrainConfig
from ..events import EventBus
from .plan import Plan

if TYPE_CHECKING:
    from ..adapters.network import AdapterNetwork
    from ..data.dataset import TrainDataset
    from ..data.folders import DatasetIndex
    from ..models.family import ModelFamily
    from .noise import NoiseSettings
    from .text_cache import TextCache
    from .validation_set import ValidationState

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
          "float": torch.float32}


@dataclass
class TextEncoderState:
    """Whether the text encoder's adapters train in this step; stop_step: stop_text_encoder_training's
    step from which they no longer do; cache: caption -> embeddings while the encoder is frozen;
    on_host: the frozen encoders are on the host (a cached run's, until train/loop.py place_text_encoders
    decides: for good when the cache holds every caption; they visit the device for anything else to
    encode: a sample prompt, a validation caption)."""
    training: bool
    stop_step: int | None = None
    cache: "TextCache | None" = None
    on_host: bool = False


@dataclass
class RunCaches:
    """Values computed once per run when first needed (the base model's hashes, the dataset's fingerprint)."""
    model_hashes: tuple[str, str] | None = None
    dataset_fingerprint: dict | None = None


@dataclass(frozen=True)
class Run:
    cfg: TrainConfig
    given_cfg: TrainConfig  # the config as given (cfg may take its ranks from network_weights)
    bus: EventBus
    accelerator: Accelerator
    seed: int
    output_dir: Path
    model: "ModelFamily"
    network: "AdapterNetwork"
    dataset: "TrainDataset"
    index: "DatasetIndex"
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    plan: Plan
    noise_settings: "NoiseSettings"
    text: TextEncoderState
    validation: "ValidationState"
    weight_dtype: torch.dtype = torch.float32
    memory_format: torch.memory_format = torch.preserve_format  # of the UNet's inputs (channels_last)
    overwrite: bool = False
    warnings: tuple[str, ...] = ()
    caches: RunCaches = field(default_factory=RunCaches)
    started_at: float = field(default_factory=time.time)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step gives the loop: the mean loss, the images it trained on, and extra
    numbers for the step event (max-norm scaling, text-cache lookups)."""
    loss: float
    images: int
    stats: dict[str, float]
    ds: list[tuple[float, float]] = field(default_factory=list)  # (d, k) of each Prodigy / DAdaptation group
