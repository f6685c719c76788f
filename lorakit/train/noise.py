"""Training noise and timesteps, drawn per sample from that sample's own seed.

docs/kohya-rules.md 2.9. Every random number a sample uses comes from one CPU
generator seeded with its per-sample seed, in this fixed order:

1. timestep            randint[min_timestep, max_timestep)   (none if min == max)
2. noise               randn(C, H, W)
3. offset strength     rand(1)                (noise_offset_random_strength)
4. offset              randn(C)               (noise_offset)
5. per multires level  rand(1) for r, then randn(C, h_i, w_i)   (multires_noise_iterations)
6. ip strength         rand(1)                (ip_noise_gamma_random_strength)
7. ip noise            randn(C, H, W)         (ip_noise_gamma)

So a sample's noise never depends on the batch it is in, nor on the other samples.
Differences from sd-scripts (on purpose): the random strengths are drawn per sample
(sd-scripts: one value for the whole batch) and multires noise is normalised per
sample (sd-scripts: by the std of the whole batch).
"""
from __future__ import annotations

from dataclasses import dataclass, field, make_dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..config.schema import TrainConfig
from ..errors import ConfigError
from ..transfer import to_device


# the schema fields that decide a sample's noise and timestep
NOISE_KEYS = ("noise_offset", "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
              "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength", "min_timestep",
              "max_timestep")


class NoiseSettings(make_dataclass("NoiseFields", [(k, TrainConfig.model_fields[k].annotation,
                                                    field(default=TrainConfig.model_fields[k].default))
                                                   for k in NOISE_KEYS], frozen=True)):
    """NOISE_KEYS with their types and defaults from the schema (NoiseSettings() is all off)."""

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> "NoiseSettings":
        return cls(**cfg.model_dump(include=set(NOISE_KEYS)))


@dataclass
class NoiseDraw:
    noise: torch.Tensor        # the target's eps (B, C, H, W)
    input_noise: torch.Tensor  # what add_noise mixes into the latents (= noise unless ip_noise_gamma)
    timesteps: torch.Tensor    # (B,) int64


def timestep_range(num_timesteps: int, min_timestep: Optional[int], max_timestep: Optional[int]
                   ) -> tuple[int, int]:
    lo = 0 if min_timestep is None else int(min_timestep)
    hi = num_timesteps if max_timestep is None else int(max_timestep)
    if not 0 <= lo <= hi <= num_timesteps or lo == num_timesteps:
        raise ConfigError(f"timesteps [{lo}, {hi}) are not within [0, {num_timesteps})", key="min_timestep",
                          fix=f"use 0 <= min_timestep < max_timestep <= {num_timesteps}")
    return lo, hi


def offset_amount(channels: int, g: torch.Generator, s: NoiseSettings,
                  latent: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-channel offset (C,) of one sample: off * randn(C).

    off = noise_offset (times U(0,1) with random strength); with adaptive_noise_scale
    off = max(off + ans * |mean_HW(latent)|, 0) per channel.
    """
    off = torch.full((channels,), float(s.noise_offset))
    if s.noise_offset_random_strength:
        off = off * torch.rand(1, generator=g)
    if s.adaptive_noise_scale:
        assert latent is not None, "adaptive_noise_scale needs the latent"
        off = torch.clamp(off + s.adaptive_noise_scale * latent.float().mean(dim=(1, 2)).abs(), min=0.0)
    return off * torch.randn(channels, generator=g)


def pyramid_noise(noise: torch.Tensor, g: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """Multi-resolution noise of one sample (C, H, W), normalised to unit std.

    For i < iterations: r ~ U(2, 4); add bilinear-upsampled randn of size (H/r^i, W/r^i)
    (at least 1) times discount^i; stop after a level of size 1.
    """
    c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = 2.0 + 2.0 * torch.rand(1, generator=g).item()
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        level = torch.randn(1, c, hn, wn, generator=g)
        out += F.interpolate(level, size=(h, w), mode="bilinear", align_corners=False)[0] * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def sample_one(shape: tuple[int, int, int], seed: int, s: NoiseSettings, lo: int, hi: int,
               latent: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(noise, input noise, timestep) of one sample of `shape` (C, H, W), on the CPU in float32.

    latent (C, H, W) is needed only for adaptive_noise_scale.
    """
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    t = int(torch.randint(lo, hi, (1,), generator=g)) if lo < hi else lo
    noise = torch.randn(shape, generator=g)
    if s.noise_offset:
        noise = noise + offset_amount(shape[0], g, s, latent)[:, None, None]
    if s.multires_noise_iterations:
        noise = pyramid_noise(noise, g, s.multires_noise_iterations, s.multires_noise_discount)
    input_noise = noise
    if s.ip_noise_gamma:
        gamma = s.ip_noise_gamma * (torch.rand(1, generator=g).item() if s.ip_noise_gamma_random_strength else 1.0)
        input_noise = noise + gamma * torch.randn(shape, generator=g)
    return noise, input_noise, t


def draw_noise(latents: torch.Tensor, seeds: list[int], settings: NoiseSettings, num_timesteps: int
               ) -> NoiseDraw:
    """Noise, input noise and timesteps for a batch, each sample from its own seed."""
    if len(seeds) != latents.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {latents.shape[0]} samples")
    lo, hi = timestep_range(num_timesteps, settings.min_timestep, settings.max_timestep)
    shape = tuple(latents.shape[1:])
    cpu = latents.detach().float().cpu() if settings.adaptive_noise_scale and settings.noise_offset else None
    parts = [sample_one(shape, seed, settings, lo, hi, None if cpu is None else cpu[i])
             for i, seed in enumerate(seeds)]
    noise = to_device(torch.stack([p[0] for p in parts]), latents.device, latents.dtype)
    input_noise = noise if not settings.ip_noise_gamma else \
        to_device(torch.stack([p[1] for p in parts]), latents.device, latents.dtype)
    timesteps = to_device(torch.tensor([p[2] for p in parts], dtype=torch.long), latents.device)
    return NoiseDraw(noise, input_noise, timesteps)


# ---- schedule ----------------------------------------------------------------------

def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Betas whose last alphas_cumprod is 0 (Lin et al. 2023, arXiv 2305.08891, Algorithm 1).

    sqrt(abar) is shifted so that its last value is 0 and scaled so that its first value
    is unchanged; the betas are then read back from the new cumulative products.
    """
    b = betas.double()
    root = torch.cumprod(1.0 - b, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    abar = root**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return (1.0 - alphas).to(betas.dtype)


def zero_terminal_snr_scheduler(scheduler: Any) -> Any:
    """A new scheduler of the same class with zero-terminal-SNR betas.

    Its config says rescale_betas_zero_snr=True, so samplers built from it (from_config)
    know; its betas/alphas/alphas_cumprod are ours (alphas_cumprod[-1] == 0 exactly).
    """
    new = type(scheduler).from_config(scheduler.config, rescale_betas_zero_snr=True)
    new.betas = rescale_zero_terminal_snr(scheduler.betas.float())
    new.alphas = 1.0 - new.betas
    new.alphas_cumprod = torch.cumprod(new.alphas, dim=0)
    return new


def training_scheduler(scheduler: Any, zero_terminal_snr: bool) -> Any:
    """The scheduler to train with: unchanged, or rescaled once (idempotent)."""
    if zero_terminal_snr and float(scheduler.alphas_cumprod[-1]) != 0.0:
        return zero_terminal_snr_scheduler(scheduler)
    return scheduler


# ---- checks ------------------------------------------------------------------------

def validate_noise_config(cfg: TrainConfig, v_parameterization: Optional[bool] = None) -> list[str]:
    """Raise ConfigError for contradictory noise/loss settings; return warnings for useless ones.

    v_parameterization: the model's resolved value (default: cfg.v_parameterization).
    """
    v_param = cfg.v_parameterization if v_parameterization is None else v_parameterization
    warnings: list[str] = []
    if cfg.adaptive_noise_scale and not cfg.noise_offset:
        raise ConfigError("adaptive_noise_scale adds to noise_offset, which is off", key="adaptive_noise_scale",
                          fix="set noise_offset (e.g. 0.05) or remove adaptive_noise_scale")
    if cfg.scale_v_pred_loss_like_noise_pred and not v_param:
        raise ConfigError("scale_v_pred_loss_like_noise_pred needs a v-prediction model",
                          key="scale_v_pred_loss_like_noise_pred",
                          fix="remove it, or set v_parameterization for a v-prediction model")
    lo, hi = cfg.min_timestep, cfg.max_timestep
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"min_timestep {lo} is above max_timestep {hi}", key="min_timestep",
                          fix="use min_timestep < max_timestep (timesteps are drawn from [min, max))")
    if cfg.noise_offset_random_strength and not cfg.noise_offset:
        warnings.append("noise_offset_random_strength has no effect without noise_offset")
    if cfg.ip_noise_gamma_random_strength and not cfg.ip_noise_gamma:
        warnings.append("ip_noise_gamma_random_strength has no effect without ip_noise_gamma")
    if cfg.zero_terminal_snr and not v_param:
        warnings.append("zero_terminal_snr with an epsilon-prediction model: at the last timestep the input is "
                        "pure noise and the target is that noise; zero terminal SNR is meant for v-prediction")
    if cfg.min_snr_gamma and cfg.debiased_estimation_loss:
        warnings.append("min_snr_gamma and debiased_estimation_loss are both on: both weights multiply")
    if cfg.loss_type in ("l2", "l1") and cfg.huber_schedule != "snr":
        warnings.append(f"huber_schedule has no effect with loss_type {cfg.loss_type}")
    return warnings
