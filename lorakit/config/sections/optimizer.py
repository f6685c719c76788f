"""The optimizer keys of the training schema: optimizer, learning rates and their schedule."""
from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, field_validator

from ..checks import one_text_encoder_lr, parse_kv_args
from ..fields import RESUME_LR, F


class OptimizerKeys(BaseModel):
    optimizer_type: str = F("AdamW", "Optimizer name (case-insensitive) or a module.Class path.")
    optimizer_args: dict[str, Any] = F(
        {}, "Optimizer keyword arguments; also accepts kohya's list of 'key=value' strings.")
    learning_rate: float = F(1e-4, "Fallback learning rate for unet_lr / text_encoder_lr.", ge=0,
                             resume=RESUME_LR, ss="ss_learning_rate")
    unet_lr: Optional[float] = F(None, "UNet adapter lr (unset = learning_rate; 0 = frozen).",
                                 ge=0, resume=RESUME_LR)
    text_encoder_lr: Optional[float] = F(
        None, "Text-encoder adapter lr (unset = learning_rate; 0 = frozen); SDXL: both encoders. A "
        "list of equal values (the kohya_ss GUI writes one per SDXL encoder) is read as one.", ge=0, resume=RESUME_LR)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = F(
        "constant", "Learning-rate schedule, stepped once per optimizer step (diffusers' formulas).",
        ss="ss_lr_scheduler")
    lr_scheduler_num_cycles: int = F(1, "Hard restarts of cosine_with_restarts.", ge=1)
    lr_scheduler_power: float = F(1.0, "Exponent of the polynomial schedule (1 = linear).", gt=0,
                                  gui_unset=(0,))
    lr_scheduler_type: Optional[str] = F(
        None, "A torch.optim.lr_scheduler class name or module.Class path; replaces lr_scheduler.")
    lr_scheduler_args: dict[str, Any] = F(
        {}, "Keyword arguments of lr_scheduler_type; also accepts kohya's list of 'key=value'.")
    lr_warmup_steps: float = F(
        0, "Warmup optimizer steps; a value below 1 is a fraction of the total steps.", ge=0,
        ss="ss_lr_warmup_steps", gui_unset=(0,))
    max_grad_norm: float = F(1.0, "Clip the gradient norm on each optimizer step (0 = off).",
                             ge=0, ss="ss_max_grad_norm")

    @field_validator("text_encoder_lr", mode="before")
    @classmethod
    def _te_lr(cls, v: Any) -> Any:
        return one_text_encoder_lr(v)[0]

    @field_validator("optimizer_args", "lr_scheduler_args", mode="before")
    @classmethod
    def _optimizer_args(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return parse_kv_args(v)
        return v
