"""The network keys of the training schema: the adapter: algorithm, ranks, dropouts, block-wise settings, LoRA+."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, field_validator

from ...adapters.blockwise import SD_BLOCKS, SDXL_BLOCKS
from ..checks import LR_WEIGHT_PRESETS, is_number
from ..fields import RESUME_SAFE, SS_FILE_NAME, F

# which layers get adapters (adapters/presets.py): kohya's own targets, then LyCORIS's presets
NETWORK_PRESETS = ("kohya", "attn-mlp", "attn-only", "full")
# the ranks of a network: from the config, or a network_weights file (dim_from_weights) or a resumed state
DIM_KEYS = ("network_dim", "network_alpha", "conv_dim", "conv_alpha")


class NetworkKeys(BaseModel):
    network_type: str = F(
        "lora", "Adapter algorithm from the registry (lora; with conv_dim it is kohya LoCon).")
    network_dim: int = F(8, "Rank of each adapter.", ge=1)
    network_alpha: Optional[float] = F(
        1.0, "Scale numerator: delta W is multiplied by alpha/dim. 0 or unset means alpha = dim.",
        ge=0, kohya_none=0)
    conv_dim: Optional[int] = F(
        None, "Rank for 3x3 convs in ResNet blocks (enables LoCon); unset = not adapted.", ge=1,
        network_arg="conv_dim")
    conv_alpha: Optional[float] = F(None, "Alpha for conv layers (unset = conv_dim).", ge=0,
                                    network_arg="conv_alpha", kohya_none=0)
    network_dropout: Optional[float] = F(
        None, "Dropout on the down-projection output during training.", ge=0, lt=1, ss="ss_network_dropout",
        network_arg="dropout")
    rank_dropout: Optional[float] = F(None, "Drop each rank per sample with this probability.",
                                      ge=0, lt=1, network_arg="rank_dropout")
    module_dropout: Optional[float] = F(None, "Skip a whole module's delta with this probability.",
                                        ge=0, lt=1, network_arg="module_dropout")
    network_preset: Literal[NETWORK_PRESETS] = F(  # type: ignore[valid-type]
        "kohya", "Which layers get adapters: kohya (kohya's default targets), attn-mlp, attn-only, "
                 "or full (+ conv blocks, conv_in, conv_out, time embedding).")
    network_args: dict[str, Any] = F(
        {}, "Options of the adapter algorithm (LyCORIS network_args), e.g. use_tucker, factor, "
            "decompose_both, train_on_input, block_size; each algorithm checks its own.")
    scale_weight_norms: Optional[float] = F(
        None, "Max-norm: cap each module's ||delta W|| at this value once per optimizer step "
              "(0 or unset = off).", ge=0, ss="ss_scale_weight_norms")
    network_weights: Optional[str] = F(
        None, "Start from this adapter file (.safetensors from lorakit, kohya or LyCORIS) instead of "
              "fresh adapters; its algorithm must be network_type. Not re-applied on --resume.",
              resume=RESUME_SAFE, ss="ss_network_weights", ss_write=SS_FILE_NAME)
    dim_from_weights: bool = F(
        False, "Take network_dim/network_alpha and conv_dim/conv_alpha from the network_weights file "
               "instead of the config.")
    # block-wise settings (sd-scripts networks.lora; adapters/blockwise.py): the UNet in blocks as sd-scripts
    # counts them, 25 for SD1/SD2, 23 for SDXL (the text encoder has no block value); the count is checked
    # against the family once it is known (check_network_config)
    block_dims: Optional[list[int]] = F(
        None, "Rank of the Linear / 1x1 adapters of each UNet block: 25 values for SD1.x/2.x (IN00-IN11, "
        "MID, OUT00-OUT11), e.g. '2,2,2,2,4,4,4,4,6,6,6,6,8,6,6,6,6,4,4,4,4,2,2,2,2', 23 for SDXL (BASE, "
        "IN00-IN08, MID00-MID02, OUT00-OUT08, OUT; docs/blockwise.md); a block with 0 gets no adapters; the text "
        "encoder keeps network_dim. '' or unset = network_dim everywhere. network_type lora only.")
    block_alphas: Optional[list[float]] = F(
        None, "Alpha of each UNet block (25 values, SDXL 23; with block_dims or block lr weights); "
        "unset = network_alpha (unset network_alpha: each block's dim).")
    conv_block_dims: Optional[list[int]] = F(
        None, "Rank of the 3x3-conv adapters of each UNet block (25 values, SDXL 23; adds the "
        "ResNet/Down-/Upsample convs as conv_dim does; 0 = none in that block); unset = conv_dim in every block. "
        "Needs block_dims or block lr weights.")
    conv_block_alphas: Optional[list[float]] = F(
        None, "Alpha of the 3x3-conv adapters of each block (with conv_block_dims); unset = conv_alpha "
        "(unset conv_alpha: each block's conv dim).")
    down_lr_weight: Optional[str | list[float]] = F(
        None, "UNet lr multiplier of the down blocks (shallow -> deep), SD1.x/2.x: the 12 blocks "
        "IN00-IN11, SDXL: the 9 blocks IN00-IN08. Up to 12 (SDXL 9) numbers (missing ones are 1, an empty entry "
        "0) or a preset over those blocks, sine, cosine, linear, reverse_linear, zeros, with an optional "
        "'+number' added to each (e.g. 'sine+0.5'). A block at or below block_lr_zero_threshold gets no "
        "adapters. network_type lora only.")
    mid_lr_weight: Optional[list[float]] = F(
        None, "UNet lr multiplier of the middle block: one number (SD1.x/2.x: MID), SDXL up to 3 "
        "(MID00-MID02; missing ones are 1).", max_length=3)
    up_lr_weight: Optional[str | list[float]] = F(
        None, "UNet lr multiplier of the up blocks (deep -> shallow), SD1.x/2.x: OUT00-OUT11, SDXL: "
        "OUT00-OUT08; as down_lr_weight.")
    block_lr_zero_threshold: float = F(
        0.0, "A block lr weight not above this becomes 0: that block gets no adapters.", ge=0)
    # LoRA+ (sd-scripts and LyCORIS: the lora_up matrices learn at lr x ratio)
    loraplus_lr_ratio: Optional[float] = F(
        None, "LoRA+: the up (B) matrices train at lr x this ratio (about 16), in groups of their own "
        "('unet plus', 'textencoder plus'); 0 or unset = off. network_type lora or locon (the ones with lora_up "
        "matrices).",
        ge=0, le=1024)
    loraplus_unet_lr_ratio: Optional[float] = F(
        None, "LoRA+ ratio for the UNet; replaces loraplus_lr_ratio there (0 or unset = that value).",
        ge=0, le=1024)
    loraplus_text_encoder_lr_ratio: Optional[float] = F(
        None, "LoRA+ ratio for the text encoder; replaces loraplus_lr_ratio there (0 or unset = that "
        "value).", ge=0, le=1024)
    train_norm: bool = F(
        False, "LyCORIS: also train the LayerNorm / GroupNorm layers inside the adapted UNet blocks "
        "(W + w_norm, b + b_norm, saved as <name>.w_norm / .b_norm). Any network_type but lora (kohya's networks.lora "
        "has no train_norm; use locon).")
    network_train_unet_only: bool = F(False, "Train the UNet adapters only.")
    network_train_text_encoder_only: bool = F(False, "Train the text-encoder adapters only.")

    @field_validator("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", mode="before")
    @classmethod
    def _block_list(cls, v: Any) -> Any:
        # the GUI writes "2,2,...,2" and "" for unset; sd-scripts network_args the same string
        if isinstance(v, str):
            return [p.strip() for p in v.split(",")] if v.strip() else None
        return v

    @field_validator("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas")
    @classmethod
    def _block_list_values(cls, v: Optional[list]) -> Optional[list]:
        if v is not None and len(v) not in (SD_BLOCKS.total, SDXL_BLOCKS.total):
            raise ValueError(f"{len(v)} values; give one per UNet block, {SD_BLOCKS.total} for SD1.x/2.x "
                             f"({SD_BLOCKS.layout}) or {SDXL_BLOCKS.total} for SDXL ({SDXL_BLOCKS.layout})")
        if v is not None and any(d < 0 for d in v):
            raise ValueError(f"a value is negative ({min(v)}); a block without adapters has dim 0")
        return v

    @field_validator("down_lr_weight", "up_lr_weight", mode="before")
    @classmethod
    def _lr_weight(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return [float(v)]
        if not isinstance(v, str):
            return v
        text = v.strip()
        if not text:
            return None
        if "," in text or is_number(text):  # sd-scripts: an empty entry is 0
            return [float(p) if p.strip() else 0.0 for p in text.split(",")]
        name, _, plus = text.partition("+")
        if name not in LR_WEIGHT_PRESETS or (plus and not is_number(plus)):
            raise ValueError(f"'{v}' is neither up to 12 (SDXL 9) comma-separated numbers nor a preset "
                             f"({', '.join(LR_WEIGHT_PRESETS)}, optionally '+number', e.g. 'sine+0.5')")
        return text

    @field_validator("down_lr_weight", "up_lr_weight")
    @classmethod
    def _lr_weight_len(cls, v: Any) -> Any:
        if isinstance(v, list) and len(v) > 12:
            raise ValueError(f"{len(v)} values; the SD1.x/2.x UNet has 12 down and 12 up blocks (SDXL 9)")
        return v

    @field_validator("mid_lr_weight", mode="before")
    @classmethod
    def _mid_lr_weight(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return [float(v)]
        if isinstance(v, str):
            return [float(p) if p.strip() else 0.0 for p in v.split(",")] if v.strip() else None
        return v

    @field_validator("block_lr_zero_threshold", mode="before")
    @classmethod
    def _threshold(cls, v: Any) -> Any:
        return 0.0 if isinstance(v, str) and not v.strip() else v  # the GUI's empty text box

    @field_validator("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio")
    @classmethod
    def _loraplus(cls, v: Optional[float]) -> Optional[float]:
        return None if v == 0 else v  # the GUI writes 0 for off; sd-scripts gets no argument then

    @field_validator("network_alpha", "conv_alpha")
    @classmethod
    def _alpha(cls, v: Optional[float]) -> Optional[float]:
        return None if v == 0 else v  # kohya: alpha 0 means alpha = dim
