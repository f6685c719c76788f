"""The training objective, shared by the optimizer step (loop.micro_step_loss) and the validation
loss (validation._batch_loss_sum): noised latents -> the model's prediction -> the target ->
the weighted per-sample loss. The callers differ only in where noise and text come from (the
sample's seed and the current text encoder; validation's fixed timesteps and noise)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .loss import target, weighted_loss

if TYPE_CHECKING:
    from ..models.family import PromptEmbeds
    from .noise import NoiseDraw
    from .run import Run


def sample_losses(run: "Run", latents: torch.Tensor, d: "NoiseDraw", embeds: "PromptEmbeds",
                  added: dict[str, torch.Tensor] | None, sample_weights: torch.Tensor,
                  mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample weighted losses (B,) of the model's prediction from `latents` noised with `d`
    (loss_type, min-SNR and the other timestep weights, the alpha mask; train/loss.py)."""
    m = run.model
    sched = m.noise_scheduler
    noisy = sched.add_noise(latents, d.input_noise, d.timesteps)
    with run.accelerator.autocast():
        # .to() returns the tensor itself when dtype and memory format already match (float32)
        pred = m.predict(noisy.to(run.weight_dtype, memory_format=run.memory_format), d.timesteps,
                         embeds.to(run.weight_dtype), added)
    tgt = target(sched, latents, d.noise, d.timesteps, m.v_parameterization)
    return weighted_loss(run.cfg, sched, pred, tgt, d.timesteps, m.v_parameterization,
                         sample_weights=sample_weights, mask=mask)
