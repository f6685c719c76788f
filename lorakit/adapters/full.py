"""Native fine-tuning (LyCORIS "full"): delta W and delta bias trained directly.

W' = W + diff, b' = b + diff_b; diff has the wrapped weight's shape, diff_b the bias's
(only when the layer has a bias); both start at 0; scale 1, no alpha (loaders add diff as is).
Targets as LoCon (LyCORIS's defaults): kohya's attention/MLP layers plus the ResNet,
Downsample and Upsample convs. The parameters are float32 copies of every adapted weight:
SD1.5 with all those targets is about 0.8 G parameters (a 1.6 GB fp16 file).

Forward: one op with W + m * diff and bias b + m * diff_b (the same values as org(x) + op(x, diff)
+ diff_b, with one full-size matmul/conv instead of two). network_dropout drops elements of diff
while training (LyCORIS's full has none); rank_dropout does not apply (no rank); module_dropout does.
Max-norm scales diff and diff_b.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import CONV3X3, AdapterModule, RankSettings
from .declare import LOADERS, LOADS, LYCORIS_GUI_ARGS, LYCORIS_MODULE, NO, FileFormat, GuiLoraType, Loads, has_all
from .registry import register

FULL = FileFormat("full", has_all("diff"), {**{ui: LOADS for ui in LOADERS}, "diffusers": Loads(NO)},
                  kernel_key="diff", rankless=lambda ts: "no rank (full matrices)")


@register("full")
class FullModule(AdapterModule):
    network_module = LYCORIS_MODULE
    lycoris_algos = ("full",)
    gui_lora_types = {"LyCORIS/Native Fine-Tuning": GuiLoraType(LYCORIS_MODULE, LYCORIS_GUI_ARGS)}
    file_formats = (FULL,)
    has_rank = False
    ARGS: dict[str, Any] = {"use_tucker": False}  # LyCORIS configs carry it; no meaning here
    UNWRITTEN_ARGS = ("use_tucker",)

    def __init__(self, name: str, org: nn.Module, dim: int = 1, alpha: Optional[float] = None, **kw: Any):
        super().__init__(name, org, 1, None, **kw)  # no rank, no alpha
        dev = org.weight.device
        self.diff = nn.Parameter(torch.zeros(org.weight.shape, device=dev))
        self.diff_b = nn.Parameter(torch.zeros(org.bias.shape, device=dev)) if org.bias is not None else None

    def param_dtype(self) -> torch.dtype:
        return self.diff.dtype

    def bias_view(self, b: torch.Tensor, ndim: int) -> torch.Tensor:
        return b.view(1, -1, *([1] * (ndim - 2))) if self.is_conv else b

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.plain_call(args, kwargs):
            return super().forward(x, *args, **kwargs)
        bias = self.org.bias
        if self.diff_b is not None:
            bias = bias + (self.diff_b * self.multiplier).to(bias.dtype)
        return self.merged_call(x, lambda: self.dropped(self.diff), bias)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().delta_forward(x)  # op(x, diff), network_dropout on diff while training
        if self.diff_b is not None:
            y = y + self.bias_view(self.diff_b.to(y.dtype), y.dim())
        return y

    def delta_weight(self) -> torch.Tensor:
        return self.diff

    @torch.no_grad()
    def merge(self, multiplier: Optional[float] = None) -> None:
        m = self.multiplier if multiplier is None else multiplier
        super().merge(m)
        if self.diff_b is not None:
            b = self.org.bias
            b.copy_((b.float() + m * self.diff_b.float().to(b.device)).to(b.dtype))

    @torch.no_grad()
    def scale_delta(self, ratio: float) -> None:
        self.diff.mul_(ratio)
        if self.diff_b is not None:
            self.diff_b.mul_(ratio)

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        out = {"diff": self.diff}
        if self.diff_b is not None:
            out["diff_b"] = self.diff_b
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        need = {"diff"} | ({"diff_b"} if self.diff_b is not None else set())
        if "diff" not in tensors or set(tensors) - need:
            raise self.other_tensors(tensors, need)
        with torch.no_grad():
            for k in need:
                dst = getattr(self, k)
                if k not in tensors:  # a file without diff_b leaves the bias unchanged
                    dst.zero_()
                    continue
                self.copy_in(k, tensors[k], dst, "network_type", "load the file into the model it was trained on")

    def refresh_scale(self) -> None:
        self.scale = 1.0

    def extra_repr(self) -> str:
        return f"{self.name}, shape={tuple(self.diff.shape)}, bias={self.diff_b is not None}"

    @classmethod
    def rank_settings(cls, cfg: Any) -> RankSettings:
        rs = super().rank_settings(cfg)
        rs.by_kind.setdefault(CONV3X3, (1, None))  # LoCon's targets: 3x3 convs always
        return rs
