"""LoRA and kohya LoCon: delta W = up @ down * alpha / dim (adapter-format.md).

Linear: down (r, in), up (out, r). 1x1 conv: down (r, in, 1, 1), up (out, r, 1, 1).
3x3 conv (LoCon): down (r, in, k, k) with the base conv's stride and padding, up (out, r, 1, 1).
Forward is the bypass x -> down -> [dropouts] -> up, the cheapest form for small ranks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterModule
from .registry import register


@register("lora")
class LoRAModule(AdapterModule):
    def __init__(self, name: str, org: nn.Module, dim: int, alpha: float | None, **kw):
        super().__init__(name, org, dim, alpha, **kw)
        if isinstance(org, nn.Conv2d):
            self.lora_down = nn.Conv2d(org.in_channels, dim, org.kernel_size, org.stride, org.padding, bias=False)
            self.lora_up = nn.Conv2d(dim, org.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(org.in_features, dim, bias=False)
            self.lora_up = nn.Linear(dim, org.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lora_down(x)
        if self.active_training:
            if self.dropout:
                h = F.dropout(h, p=self.dropout)
            if self.rank_dropout:
                # per (sample, rank) mask, rescaled so the expected output is unchanged
                shape = (h.shape[0], self.dim) + (1,) * (h.dim() - 2) if self.is_conv else \
                    (h.shape[0],) + (1,) * (h.dim() - 2) + (self.dim,)
                keep = (torch.rand(shape, device=h.device) >= self.rank_dropout).to(h.dtype)
                h = h * keep / (1.0 - self.rank_dropout)
        return self.lora_up(h)

    def delta_weight(self) -> torch.Tensor:
        up, down = self.lora_up.weight, self.lora_down.weight
        if not self.is_conv:
            return up @ down
        # (out, r, 1, 1) x (r, in, k, k) -> (out, in, k, k)
        return torch.einsum("or,rikl->oikl", up.flatten(1), down)

    def scale_delta(self, ratio: float) -> None:
        r = ratio ** 0.5
        with torch.no_grad():
            self.lora_up.weight.mul_(r)
            self.lora_down.weight.mul_(r)

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.lora_down.weight, "lora_up.weight": self.lora_up.weight,
                "alpha": self.alpha}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.lora_down.weight.copy_(tensors["lora_down.weight"].reshape(self.lora_down.weight.shape))
            self.lora_up.weight.copy_(tensors["lora_up.weight"].reshape(self.lora_up.weight.shape))
            if "alpha" in tensors:
                self.alpha.copy_(tensors["alpha"])
                self.scale = float(self.alpha) / self.dim
