"""Validation loss over held-out images, comparable from one epoch to the next.

The images come from validation_split (held out of training, see
DatasetIndex.apply_validation_split) or validation_data_dir; each is used once (no
repeats), unaugmented (no flip, colour or crop; caption prefix/suffix only), its latent
cached once by :func:`build_validation_set`.

Every image is evaluated at FIXED timesteps, sd-scripts' choice: 4 points evenly inside
[min_timestep, max_timestep) (np.linspace(lo, hi, 6, dtype=int)[1:-1]; 200, 400, 600, 800
by default), each with FIXED noise from a seed of (validation_seed, image content,
timestep). The loss is the training loss (weighted_loss: loss_type, min-SNR and the other
timestep weights, the alpha mask; the configured noise offset / multires / input
perturbation drawn from that seed), with the model in eval mode (no dropout) and no
gradient. The value is the mean over images x timesteps.

:func:`validation_loss` leaves training untouched: every RNG (torch CPU and CUDA, Python,
numpy) and every module's train/eval mode is restored afterwards, so a run
with validation trains bit-identically to one without.
"""
from __future__ import annotations

import hashlib
import math
import random
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data.dataset import Batch
from ..transfer import on_device_all
from .noise import NoiseSettings, draw_noise
from .objective import sample_losses
from .validation_set import (ValidationResult, ValidationSet, ValidationState, build_validation_set,  # noqa: F401
                             validation_dataset)

if TYPE_CHECKING:
    from ..config.schema import TrainConfig
    from .run import Run

NUM_VALIDATION_TIMESTEPS = 4  # sd-scripts' NUM_VALIDATION_TIMESTEPS


def validation_enabled(cfg: "TrainConfig") -> bool:
    return bool(cfg.validation_split or cfg.validation_data_dir)


def should_validate(cfg: "TrainConfig", epoch: int) -> bool:
    """Validation is on and `epoch` (from 1) is a multiple of validate_every_n_epochs (default 1)."""
    every = cfg.validate_every_n_epochs or 1
    return validation_enabled(cfg) and epoch % every == 0


def should_validate_step(cfg: "TrainConfig", step: int) -> bool:
    """Validation is on and optimizer step `step` (from 1) is a multiple of validate_every_n_steps
    (unset: never). sd-scripts' rule (global_step % N == 0, the last step included); the epoch rule
    (should_validate) applies as well, independently."""
    every = cfg.validate_every_n_steps
    return validation_enabled(cfg) and bool(every) and step % every == 0


def validation_timesteps(num_train_timesteps: int, min_timestep: int | None = None,
                         max_timestep: int | None = None, n: int = NUM_VALIDATION_TIMESTEPS) -> list[int]:
    """n timesteps evenly inside [min, max): linspace(lo, hi, n + 2) without its ends, as ints."""
    lo = 0 if min_timestep is None else int(min_timestep)
    hi = num_train_timesteps if max_timestep is None else int(max_timestep)
    ts = [int(t) for t in np.linspace(lo, hi, n + 2, dtype=int)[1:-1]]
    return [min(t, num_train_timesteps - 1) for t in ts]


def validation_noise_seed(seed: int, image_hash: str, timestep: int) -> int:
    """The noise seed of one (image, timestep): fixed for the whole run."""
    d = hashlib.sha256(f"validation:{seed}:{image_hash}:{int(timestep)}".encode()).digest()
    return int.from_bytes(d[:8], "little") & ((1 << 63) - 1)


# ---- state kept across a validation pass ------------------------------------------------

class _Preserved:
    """Saves every RNG and the train/eval mode of every module under `roots`; restores them on exit."""

    def __init__(self, roots: list[Any]):
        self.roots = [r for r in roots if isinstance(r, torch.nn.Module)]

    def __enter__(self) -> "_Preserved":
        self.modes = [(m, m.training) for r in self.roots for m in r.modules()]
        self.torch_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self.py_state, self.np_state = random.getstate(), np.random.get_state()
        return self

    def __exit__(self, *exc: Any) -> None:
        for m, training in self.modes:
            m.training = training
        torch.set_rng_state(self.torch_state)
        if self.cuda_state is not None:
            torch.cuda.set_rng_state_all(self.cuda_state)
        random.setstate(self.py_state)
        np.random.set_state(self.np_state)


def _optimizer_eval(run: "Run"):
    """Schedule-free optimizers validate at their averaged weights (eval_mode restores the previous
    mode after; nesting is safe); a no-op for the others."""
    from ..optim.optimizers import eval_mode

    return eval_mode(run.optimizer) if run.optimizer is not None else nullcontext()


def validation_loss(run: "Run") -> float:
    """Mean loss over the validation images x fixed timesteps (see the module doc); NaN when there
    are no validation images. The set is built (latents cached) on the first call, kept in
    run.validation.set. Model modes and every RNG are restored, so training does not change."""
    return evaluate(run).loss


def evaluate(run: "Run") -> ValidationResult:
    """validation_loss with what it used: the first max_validation_steps batches of the fixed batch
    order (all when unset), as sd-scripts' `val_step >= validation_steps: break`."""
    vs = run.validation.set
    if vs is None:
        vs = run.validation.set = build_validation_set(run.cfg, run.index, run.model.vae, run.device, run.seed)
    if vs is None or len(vs) == 0:
        return ValidationResult(math.nan, 0, 0)
    limit = run.cfg.max_validation_steps
    cfg, m = run.cfg, run.model
    settings = run.noise_settings
    timesteps = validation_timesteps(m.noise_scheduler.config.num_train_timesteps, settings.min_timestep,
                                     settings.max_timestep)
    total, count, batches, images = 0.0, 0, 0, 0
    # frozen, cached text encoders may live on the host (train/loop.py place_text_encoders)
    with _Preserved([m.unet, *m.text_encoders, run.network]), on_device_all(m.text_encoders, run.device):
        for module in (m.unet, *m.text_encoders, run.network):
            if isinstance(module, torch.nn.Module):
                module.eval()
        with _optimizer_eval(run), torch.no_grad():
            for batch in vs.batches():
                if limit and batches >= limit:
                    break
                total += _batch_loss_sum(run, vs, batch, timesteps, settings)
                count += len(batch) * len(timesteps)
                batches, images = batches + 1, images + len(batch)
    return ValidationResult(total / count, batches, images)


def _batch_loss_sum(run: "Run", vs: ValidationSet, batch: Batch, timesteps: list[int],
                    settings: NoiseSettings) -> float:
    """Sum over the batch's images x `timesteps` of the per-sample training loss (objective.sample_losses)."""
    cfg, m = run.cfg, run.model
    num_t = m.noise_scheduler.config.num_train_timesteps
    latents = batch.latents.to(run.device).float() * m.vae.config.scaling_factor
    hashes = [vs.hashes[i] for i in batch.item_indices]
    with run.accelerator.autocast():  # the captions are encoded once for every timestep
        embeds = m.encode_prompts(batch.captions, max_token_length=cfg.max_token_length, clip_skip=cfg.clip_skip,
                                  weighted=cfg.weighted_captions, device=run.device).to(run.weight_dtype)
    added = m.added_conditioning(batch, run.device)
    total = 0.0
    for t in timesteps:
        seeds = [validation_noise_seed(vs.seed, h, t) for h in hashes]
        d = draw_noise(latents, seeds, replace(settings, min_timestep=t, max_timestep=t), num_t)
        losses = sample_losses(run, latents, d, embeds, added, batch.loss_weights.to(run.device), batch.masks)
        total += float(losses.double().sum().item())
    return total


def maybe_validate(run: "Run", step: int, epoch: int, trigger: str = "epoch") -> float | None:
    """The loop's hooks: at an epoch's end (trigger "epoch", should_validate) and after an optimizer
    step (trigger "step", should_validate_step), when there are validation images, compute the
    validation loss and emit a "validation" event (loss, images, batches, timesteps, trigger).
    Returns the loss, or None when nothing was computed.

    When both fire at the same step (the epoch's last step is a multiple of validate_every_n_steps)
    both events are emitted, as sd-scripts logs both; the weights and the noise are the same, so the
    step's result is reused instead of evaluated twice."""
    due = should_validate_step(run.cfg, step) if trigger == "step" else should_validate(run.cfg, epoch)
    if not due:
        return None
    last = run.validation.last
    if last is not None and last[0] == step:
        res = last[1]
    else:
        res = evaluate(run)
        run.validation.last = (step, res)
    if run.validation.set is None or math.isnan(res.loss):
        return None
    settings = run.noise_settings
    ts = validation_timesteps(run.model.noise_scheduler.config.num_train_timesteps, settings.min_timestep,
                              settings.max_timestep)
    run.bus.emit("validation", step, epoch, loss=res.loss, images=res.images, batches=res.batches, timesteps=ts,
                 trigger=trigger)
    return res.loss
