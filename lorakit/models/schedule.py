"""The training noise schedule of every family (SD1, SD2 and SDXL share it, as in sd-scripts)."""
from __future__ import annotations


def make_noise_scheduler(v_parameterization: bool):
    """kohya's DDPMScheduler: 1000 steps, scaled_linear 0.00085..0.012, eps or v target."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", clip_sample=False,
                         prediction_type="v_prediction" if v_parameterization else "epsilon")
