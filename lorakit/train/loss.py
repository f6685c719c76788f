"""Noise, timesteps, targets and the per-sample loss (kohya-semantics.md 2.9-2.10)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A seed per (run seed, epoch, position in the epoch's sample order)."""
    return (seed * 1_000_003 + epoch * 7_919 + position) % (2**63 - 1)


def sample_noise(latents: torch.Tensor, num_timesteps: int, seeds: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timestep drawn per sample from its own seed.

    A sample gets the same noise whatever batch it lands in, so batch 2 and
    2 x batch 1 with gradient accumulation see identical training signals.
    """
    noise, ts = [], []
    for s in seeds:
        g = torch.Generator(device="cpu").manual_seed(s)
        ts.append(torch.randint(0, num_timesteps, (1,), generator=g))
        noise.append(torch.randn(latents.shape[1:], generator=g))
    noise_t = torch.stack(noise).to(latents.device, latents.dtype)
    return noise_t, torch.cat(ts).to(latents.device)


def target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
           v_parameterization: bool) -> torch.Tensor:
    """eps, or v = sqrt(abar)*eps - sqrt(1-abar)*x0 for v-prediction."""
    return scheduler.get_velocity(latents, noise, timesteps) if v_parameterization else noise


def per_sample_mse(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), tgt.float(), reduction="none").mean(dim=(1, 2, 3))
