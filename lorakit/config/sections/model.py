"""The model keys of the training schema: the checkpoint and how captions are tokenized."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel

from ..fields import RESUME_SAFE, SS_FILE_NAME, F


class ModelKeys(BaseModel):
    pretrained_model_name_or_path: Optional[str] = F(
        None, "Local SD1.x/2.x or SDXL checkpoint: a diffusers folder or a single .safetensors/.ckpt file.",
        resume=RESUME_SAFE, ss="ss_sd_model_name", ss_write=SS_FILE_NAME)
    sdxl: Optional[bool] = F(
        None, "The checkpoint is SDXL (kohya_ss's sdxl checkbox; sd-scripts' sdxl_train_network.py). Unset: "
        "the family is detected from the weights; true / false is an error when the weights say otherwise.")
    v2: bool = F(False, "The checkpoint is SD2.x (detected from the file when it can be).")
    v_parameterization: bool = F(False, "Train with the v-prediction target (SD2 768-v models).")
    vae: Optional[str] = F(None, "Optional separate VAE (diffusers folder or single file).",
                           resume=RESUME_SAFE)
    no_half_vae: bool = F(
        False, "kohya's switch to keep the VAE in float32 (kohya_ss: sdxl_no_half_vae; SDXL's VAE overflows "
        "in fp16). lorakit always encodes in float32, so either value gives the same latents.", resume=RESUME_SAFE)
    clip_skip: int = F(1, "Use the k-th last text-encoder layer (then final_layer_norm); 1 = last.",
                       ge=1, le=12, ss="ss_clip_skip")
    max_token_length: Literal[75, 150, 225] = F(
        75, "Caption tokens: 75, 150 or 225 (chunks of 75 encoded separately, as kohya).",
        ss="ss_max_token_length")
