"""Noise, timesteps, targets and the per-sample loss (kohya-semantics.md 2.9-2.10)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_noise(latents: torch.Tensor, num_timesteps: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
    t = torch.randint(0, num_timesteps, (latents.shape[0],), generator=generator, device=latents.device)
    return noise, t


def target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
           v_parameterization: bool) -> torch.Tensor:
    """eps, or v = sqrt(abar)*eps - sqrt(1-abar)*x0 for v-prediction."""
    return scheduler.get_velocity(latents, noise, timesteps) if v_parameterization else noise


def per_sample_mse(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), tgt.float(), reduction="none").mean(dim=(1, 2, 3))
