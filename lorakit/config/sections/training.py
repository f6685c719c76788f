"""The training keys of the training schema: batch, precision, speed, noise, timesteps and loss."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, field_validator

from ..fields import RESUME_SAFE, SS_NEUTRAL_NONE, F


class TrainingKeys(BaseModel):
    train_batch_size: int = F(1, "Images per micro-batch.", ge=1, ss="ss_batch_size_per_device",
                              dataset_key="batch_size")
    gradient_accumulation_steps: int = F(1, "Micro-batches per optimizer step.", ge=1,
                                         ss="ss_gradient_accumulation_steps")
    max_train_steps: Optional[int] = F(
        None, "Optimizer steps. With max_train_epochs too, training stops at whichever comes first. "
              "Neither set: 1600 (sd-scripts' default).", ge=1, resume=RESUME_SAFE)
    max_train_epochs: Optional[int] = F(None, "Epochs to train (see max_train_steps).", ge=1,
                                        resume=RESUME_SAFE, gui_unset=(0,))
    seed: Optional[int] = F(None, "Random seed; unset = a random one, recorded in the metadata.",
                            ge=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = F("no", "Autocast precision.", ss="ss_mixed_precision")
    gradient_checkpointing: bool = F(False, "Recompute activations in backward to save memory.",
                                     ss="ss_gradient_checkpointing")
    full_fp16: bool = F(
        False, "Adapter weights, gradients and optimizer state in float16 (needs mixed_precision = "
        "'fp16'; the gradient scaler still guards overflow). Saves memory, loses precision.", ss="ss_full_fp16")
    full_bf16: bool = F(
        False, "Adapter weights, gradients and optimizer state in bfloat16 (needs mixed_precision = "
        "'bf16'). Saves memory, loses precision.")
    fp8_base: bool = F(
        False, "Store the frozen UNet and text-encoder weights in float8_e4m3fn and compute in the "
        "autocast dtype (needs CUDA and mixed_precision fp16/bf16). Saves memory, changes results slightly.",
        ss="ss_fp8_base")
    stop_text_encoder_training: int = F(
        0, "kohya GUI 'Stop TE (% of total steps)': the text encoder trains for the first "
        "ceil(total_steps * N / 100) optimizer steps, then its adapters are frozen (no gradient, no update, "
        "the UNet keeps training); -1 = the text encoder is not trained at all; 0 = no stop.", ge=-1, le=100)
    # speed (lorakit/train/speed.py); none of these changes what is trained, only how fast
    torch_compile: bool = F(
        False, "torch.compile the UNet in place after the adapters are applied (and the text "
               "encoder when it is trained); each new bucket shape compiles once.", resume=RESUME_SAFE)
    dynamo_backend: str = F(
        "inductor", "torch.compile backend (list_backends(): inductor, aot_eager...) for torch_compile; "
        "GUI 'no' = off. inductor is refused on the CPU with torch < 2.14.1: wrong gradients there "
        "(docs/speed.md)", resume=RESUME_SAFE)
    torch_compile_mode: Optional[Literal["default", "reduce-overhead", "max-autotune",
                                         "max-autotune-no-cudagraphs"]] = F(
        None, "torch.compile mode (inductor only): default, reduce-overhead (CUDA graphs, for small "
              "batches), max-autotune, max-autotune-no-cudagraphs; unset = default.", resume=RESUME_SAFE)
    torch_compile_scope: Literal["regional", "whole"] = F(
        "regional", "What torch_compile compiles: regional = each repeated block (transformer and ResNet "
                    "blocks, text-encoder layers) with its adapters, one graph per block shape, compiled "
                    "several times faster; whole = the whole UNet (and text encoder) as one graph.",
                    resume=RESUME_SAFE)
    torch_compile_dynamic: bool = F(
        False, "Compile with dynamic shapes (kohya_ss: dynamo_use_dynamic): one graph per block serves "
               "every bucket size and batch size, instead of one compile per bucket shape; worth it with "
               "many buckets (docs/speed.md).", resume=RESUME_SAFE)
    channels_last: bool = F(
        False, "UNet (and the VAE when it encodes during training) and their inputs in the "
               "channels_last memory format.", resume=RESUME_SAFE)
    # noise and timesteps (lorakit/train/noise.py); every draw comes from the sample's own seed
    noise_offset: float = F(0.0, "Add noise_offset * randn per sample and channel to the noise "
                                 "(darker/brighter images; about 0.05-0.1); 0 = off.", ge=0, le=1,
                                 ss="ss_noise_offset", ss_write=SS_NEUTRAL_NONE, neutral=0)
    noise_offset_random_strength: bool = F(
        False, "Scale noise_offset by U(0,1), drawn per sample.", ss="ss_noise_offset_random_strength")
    adaptive_noise_scale: float = F(
        0.0, "Per sample and channel: offset = max(noise_offset + this * |mean of the latent "
             "channel|, 0). Needs noise_offset; 0 = off.", ge=-1, le=1,
             ss="ss_adaptive_noise_scale", ss_write=SS_NEUTRAL_NONE, neutral=0)
    multires_noise_iterations: int = F(
        0, "Multi-resolution (pyramid) noise levels, about 6-10; 0 = off.", ge=0, le=64,
        ss="ss_multires_noise_iterations", ss_write=SS_NEUTRAL_NONE, neutral=0)
    multires_noise_discount: float = F(
        0.3, "Weight of pyramid level i is discount^i (with multires_noise_iterations).", gt=0, le=1,
        ss="ss_multires_noise_discount")
    ip_noise_gamma: float = F(0.0, "Input perturbation: noisy latents get noise + gamma*randn, the "
                                   "target stays the noise (about 0.1); 0 = off.", ge=0, le=1,
                                   ss="ss_ip_noise_gamma", ss_write=SS_NEUTRAL_NONE, neutral=0)
    ip_noise_gamma_random_strength: bool = F(
        False, "Scale ip_noise_gamma by U(0,1), drawn per sample.", ss="ss_ip_noise_gamma_random_strength")
    min_timestep: Optional[int] = F(None, "Lowest training timestep (unset = 0).", ge=0, le=999,
                                    gui_unset=(0,))
    max_timestep: Optional[int] = F(
        None, "Timesteps are drawn from [min_timestep, max_timestep) (unset = 1000); "
              "min = max trains that one timestep.", ge=0, le=1000, gui_unset=(0, 1000))
    zero_terminal_snr: bool = F(
        False, "Rescale the DDPM betas so the last timestep is pure noise (for v-prediction).",
        ss="ss_zero_terminal_snr")
    # loss (lorakit/train/loss.py)
    min_snr_gamma: float = F(
        0.0, "Min-SNR weighting: min(snr, gamma)/snr (eps) or /(snr+1) (v-pred); about 5; 0 = off.",
        ge=0, ss="ss_min_snr_gamma", ss_write=SS_NEUTRAL_NONE, neutral=0)
    debiased_estimation_loss: bool = F(
        False, "Weight the loss by 1/sqrt(snr) (eps) or 1/(snr+1) (v-pred), snr capped at 1000.",
        ss="ss_debiased_estimation")
    v_pred_like_loss: float = F(
        0.0, "Add a v-prediction-like loss: loss * (1 + v_pred_like_loss * (snr + 1) / snr), snr capped "
        "at 1000 (sd-scripts' add_v_prediction_like_loss); 0 = off.", ge=0)
    scale_v_pred_loss_like_noise_pred: bool = F(
        False, "v-prediction only: weight the loss by snr/(snr+1), like an eps loss.")
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = F(
        "l2", "Elementwise loss: l2, l1, or pseudo-Huber huber / smooth_l1 with huber_c.",
        ss="ss_loss_type")
    huber_schedule: Literal["constant", "exponential", "snr"] = F(
        "snr", "Huber threshold over timesteps: constant c, exponential from 1 (t=0) to c (t=T), "
               "or snr-based (huber / smooth_l1 only).")
    huber_c: float = F(0.1, "Huber threshold parameter c (huber / smooth_l1 only).", gt=0, le=1,
                       ss="ss_huber_c")
    huber_scale: float = F(1.0, "Multiplies the Huber threshold (huber / smooth_l1 only).", gt=0)

    @field_validator("dynamo_backend", mode="before")
    @classmethod
    def _backend(cls, v: Any) -> Any:
        return v.strip().lower() if isinstance(v, str) else v  # the GUI and accelerate also write upper case
