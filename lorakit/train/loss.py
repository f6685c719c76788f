"""Noise, timesteps, targets and the per-sample loss (docs/kohya-rules.md 2.9-2.10).

Per sample: elementwise loss (l2, l1, huber, smooth_l1) -> optional mask -> mean -> (B,);
then the timestep weights (min-SNR, v-pred-like-eps scaling, v_pred_like_loss, debiased estimation) and the
sample weights (prior_loss_weight) multiply it, in sd-scripts' order.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F

from .noise import NoiseSettings, draw_noise

if TYPE_CHECKING:
    from ..config.schema import TrainConfig

LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
SNR_MAX = 1000.0   # sd-scripts caps the SNR at 1000 (t = 0 of SD's schedule is ~1175)
SNR_MIN = 1e-3     # ours: keeps 1/sqrt(snr) finite at the last step of a zero-terminal-SNR schedule


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A seed per (run seed, epoch, position in the epoch's sample order)."""
    return (seed * 1_000_003 + epoch * 7_919 + position) % (2**63 - 1)


def latent_seed(sample: int) -> int:
    """The seed of a sample's VAE posterior draw (uncached latents), from its sample_seed: one
    LCG step, so it is not the noise's seed (equal seeds would make the draw equal the noise)."""
    return (sample * 6_364_136_223_846_793_005 + 1_442_695_040_888_963_407) % (2**63 - 1)


def sample_noise(latents: torch.Tensor, num_timesteps: int, seeds: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timestep drawn per sample from its own seed (plain Gaussian, t in [0, T)).

    A sample gets the same noise whatever batch it lands in, so batch 2 and
    2 x batch 1 with gradient accumulation see identical training signals.
    See noise.draw_noise for noise offset, multires and input perturbation.
    """
    d = draw_noise(latents, seeds, NoiseSettings(), num_timesteps)
    return d.noise, d.timesteps


def target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
           v_parameterization: bool) -> torch.Tensor:
    """eps, or v = sqrt(abar)*eps - sqrt(1-abar)*x0 for v-prediction."""
    return scheduler.get_velocity(latents, noise, timesteps) if v_parameterization else noise


def per_sample_mse(pred: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred.float(), tgt.float(), reduction="none").mean(dim=(1, 2, 3))


# ---- SNR and timestep weights --------------------------------------------------------

def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """abar / (1 - abar) at each timestep, float64 on the timesteps' device."""
    # indexed where the timesteps are: a round trip through the CPU would make the host wait for
    # the UNet's forward every step (diffusers' add_noise already keeps alphas_cumprod there)
    abar = alphas_cumprod.detach().to(timesteps.device, torch.float64)[timesteps.detach().long()]
    return abar / (1.0 - abar)


def min_snr_weight(snr_t: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023), sd-scripts' formula since 2023-11.

    eps: min(snr, gamma) / snr  (1 where snr <= gamma, also at snr = 0)
    v:   min(snr, gamma) / (snr + 1)
    """
    clipped = torch.clamp(snr_t, max=gamma)
    if v_prediction:
        return clipped / (snr_t + 1.0)
    return torch.where(snr_t <= gamma, torch.ones_like(snr_t), clipped / snr_t)


def v_pred_like_noise_pred_scale(snr_t: torch.Tensor) -> torch.Tensor:
    """scale_v_pred_loss_like_noise_pred: snr / (snr + 1), snr capped at 1000 (as sd-scripts)."""
    s = torch.clamp(snr_t, max=SNR_MAX)
    return s / (s + 1.0)


def v_pred_like_loss_weight(snr_t: torch.Tensor, amount: float) -> torch.Tensor:
    """v_pred_like_loss (sd-scripts add_v_prediction_like_loss): loss + loss / scale * amount with
    scale = snr / (snr + 1), i.e. the weight 1 + amount * (snr + 1) / snr; snr capped at 1000 as
    sd-scripts (floored at 1e-3, ours, so a zero-terminal-SNR last step stays finite). Between
    min-SNR / v-pred scaling and debiased estimation in sd-scripts' order; all are factors."""
    scale = v_pred_like_noise_pred_scale(torch.clamp(snr_t, min=SNR_MIN))
    return 1.0 + amount / scale


def debiased_weight(snr_t: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """Debiased estimation: 1/sqrt(snr) (eps) or 1/(snr+1) (v); snr capped at 1000 as sd-scripts
    (and floored at 1e-3, ours, for a zero-terminal-SNR schedule)."""
    s = torch.clamp(snr_t, min=SNR_MIN, max=SNR_MAX)
    return 1.0 / (s + 1.0) if v_prediction else 1.0 / torch.sqrt(s)


def timestep_weights(cfg: TrainConfig, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor,
                     v_prediction: bool) -> torch.Tensor:
    """The product of the enabled timestep weights (B,), float32; ones when none is on."""
    s = snr(alphas_cumprod, timesteps)
    w = torch.ones_like(s)
    if cfg.min_snr_gamma:
        w = w * min_snr_weight(s, float(cfg.min_snr_gamma), v_prediction)
    if cfg.scale_v_pred_loss_like_noise_pred and v_prediction:
        w = w * v_pred_like_noise_pred_scale(s)
    if cfg.v_pred_like_loss:
        w = w * v_pred_like_loss_weight(s, float(cfg.v_pred_like_loss))
    if cfg.debiased_estimation_loss:
        w = w * debiased_weight(s, v_prediction)
    return w.float()


# ---- elementwise losses ------------------------------------------------------------------

def huber_c_per_sample(loss_type: str, schedule: str, huber_c: float, huber_scale: float,
                       alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> Optional[torch.Tensor]:
    """The Huber threshold of each sample (B,), or None for l2/l1.

    constant:    c * scale
    exponential: exp(-alpha t) * scale, alpha = -ln(c) / T  (1 at t = 0, c at t = T)
    snr:         ((1 - c) / (1 + sigma)^2 + c) * scale, sigma = sqrt((1 - abar) / abar)
                 (sd-scripts leaves out huber_scale here; we apply it to every schedule)
    """
    if loss_type not in ("huber", "smooth_l1"):
        return None
    t = timesteps.detach().double()
    if schedule == "constant":
        c = torch.full_like(t, huber_c)
    elif schedule == "exponential":
        alpha = -math.log(huber_c) / alphas_cumprod.shape[0]
        c = torch.exp(-alpha * t)
    elif schedule == "snr":
        abar = alphas_cumprod.detach().to(t.device, torch.float64)[timesteps.detach().long()]
        sigma = torch.sqrt((1.0 - abar) / abar)
        c = (1.0 - huber_c) / (1.0 + sigma) ** 2 + huber_c
    else:
        raise ValueError(f"huber_schedule '{schedule}' is not one of {', '.join(HUBER_SCHEDULES)}")
    return (c * huber_scale).float()


def elementwise_loss(pred: torch.Tensor, tgt: torch.Tensor, loss_type: str = "l2",
                     huber_c: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Loss per element, float32.

    l2: d^2; l1: |d|; huber: 2c(sqrt(d^2 + c^2) - c); smooth_l1: 2(sqrt(d^2 + c^2) - c),
    c per sample (B,) (sd-scripts' pseudo-Huber forms).
    """
    d = pred.float() - tgt.float()
    if loss_type == "l2":
        return d * d
    if loss_type == "l1":
        return d.abs()
    if loss_type in ("huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss_type {loss_type} needs huber_c")
        c = huber_c.to(d.device, torch.float32).view(-1, *([1] * (d.ndim - 1)))
        core = torch.sqrt(d * d + c * c) - c
        return 2.0 * c * core if loss_type == "huber" else 2.0 * core
    raise ValueError(f"loss_type '{loss_type}' is not one of {', '.join(LOSS_TYPES)}")


def masked_mean(loss: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean over all but the batch dimension (B,); with a mask, the mask-weighted mean.

    mask: (B, 1, h, w) or (B, h, w) weights in [0, 1] at the loss' resolution, shared by
    the channels. Result: sum(loss * m) / (C * sum(m)) per sample, 0 for an all-zero mask.
    (sd-scripts multiplies by the mask and takes the plain mean, so a small mask also
    shrinks the loss, like a lower learning rate; here the mask only selects pixels.)
    """
    if mask is None:
        return loss.mean(dim=tuple(range(1, loss.ndim)))
    m = mask.to(loss.device, torch.float32)
    if m.ndim == loss.ndim - 1:
        m = m.unsqueeze(1)
    if m.shape[0] != loss.shape[0] or m.shape[1] != 1 or m.shape[2:] != loss.shape[2:]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit loss {tuple(loss.shape)}")
    dims = tuple(range(1, loss.ndim))
    num = (loss * m).sum(dim=dims)
    den = m.sum(dim=dims) * loss.shape[1]
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def per_sample_loss(pred: torch.Tensor, tgt: torch.Tensor, loss_type: str = "l2",
                    huber_c: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None
                    ) -> torch.Tensor:
    """(B,) loss of each sample before any weight."""
    return masked_mean(elementwise_loss(pred, tgt, loss_type, huber_c), mask)


def weighted_loss(cfg: TrainConfig, scheduler: Any, pred: torch.Tensor, tgt: torch.Tensor, timesteps: torch.Tensor,
                  v_prediction: bool, sample_weights: Optional[torch.Tensor] = None,
                  mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample loss (B,) with every configured weight applied (sd-scripts' order)."""
    abar = scheduler.alphas_cumprod
    c = huber_c_per_sample(cfg.loss_type, cfg.huber_schedule, cfg.huber_c, cfg.huber_scale, abar, timesteps)
    loss = per_sample_loss(pred, tgt, cfg.loss_type, c, mask)
    if sample_weights is not None:
        loss = loss * sample_weights.to(loss.device, torch.float32)
    return loss * timestep_weights(cfg, abar, timesteps, v_prediction).to(loss.device)
