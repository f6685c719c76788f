"""train_norm: LyCORIS's norm modules (lycoris/modules/norms.py semantics, written anew).

With train_norm, LyCORIS wraps every LayerNorm / GroupNorm inside the adapted parents (in
SD1/2: the GroupNorm ``norm`` and the LayerNorms ``norm1-3`` of each Transformer2DModel, and the
GroupNorms ``norm1`` / ``norm2`` of each ResnetBlock2D when the conv blocks are adapted; CLIP's
attention and MLP blocks hold no norm) with a full-size offset of its affine parameters:

    W' = W + multiplier * w_norm,  b' = b + multiplier * b_norm   (w_norm, b_norm start at 0)

so the output gains multiplier * (normalise(x) * w_norm + b_norm). The file stores
``<name>.w_norm`` and ``<name>.b_norm`` (no alpha), named like the other modules
(``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1``). Module dropout acts as
on the other modules; network and rank dropout do not apply (LyCORIS's rank dropout on norms
keeps each element with probability p, which is not a dropout); max-norm leaves them alone,
as LyCORIS does.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import AdapterModule
from .declare import LOADS, FileFormat, has_all
from .registry import register_format

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm)
# The other loaders' handling of w_norm / b_norm is not verified: inspect says "unknown" for them.
NORM = register_format(FileFormat("norm", has_all("w_norm"), {"LyCORIS": LOADS},
                                  rankless=lambda ts: "no rank (norm offsets)"))


class NormModule(AdapterModule):
    algo = "norm"
    network_module = "lycoris.kohya"

    def __init__(self, name: str, org: nn.Module, *, multiplier: float = 1.0,
                 module_dropout: Optional[float] = None):
        n = org.weight.numel()
        super().__init__(name, org, n, None, multiplier=multiplier, module_dropout=module_dropout)
        del self._buffers["alpha"]  # a norm module has no rank and no alpha
        dev = org.weight.device
        self.w_norm = nn.Parameter(torch.zeros(n, device=dev))
        self.b_norm = nn.Parameter(torch.zeros(n, device=dev)) if org.bias is not None else None

    @classmethod
    def check_target(cls, name: str, org: nn.Module) -> None:
        if not isinstance(org, NORM_TYPES) or org.weight is None:
            raise TypeError(f"{name}: {type(org).__name__} is not a LayerNorm / GroupNorm with a weight")

    def param_dtype(self) -> torch.dtype:
        return self.w_norm.dtype

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        org = self.org
        if isinstance(org, nn.GroupNorm):
            return F.group_norm(x, org.num_groups, None, None, org.eps)
        return F.layer_norm(x, org.normalized_shape, None, None, org.eps)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.normalised(x)
        shape = ((1, -1) + (1,) * (h.dim() - 2) if isinstance(self.org, nn.GroupNorm)
                 else tuple(self.org.normalized_shape))
        out = h * self.w_norm.view(shape).to(h.dtype)
        if self.b_norm is not None:
            out = out + self.b_norm.view(shape).to(h.dtype)
        return out

    def delta_weight(self) -> torch.Tensor:
        return self.w_norm.view_as(self.org.weight)

    @torch.no_grad()
    def merge(self, multiplier: Optional[float] = None) -> None:
        m = self.multiplier if multiplier is None else multiplier
        org = self.org
        org.weight.copy_((org.weight.float() + m * self.w_norm.float().view_as(org.weight)).to(org.weight.dtype))
        if self.b_norm is not None:
            org.bias.copy_((org.bias.float() + m * self.b_norm.float().view_as(org.bias)).to(org.bias.dtype))

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        out = {"w_norm": self.w_norm}
        if self.b_norm is not None:
            out["b_norm"] = self.b_norm
        return out

    def refresh_scale(self) -> None:
        pass  # no alpha, no scale

    def extra_repr(self) -> str:
        return f"{self.name}, norm of {self.w_norm.numel()}"


def find_norms(root: nn.Module, parent_match) -> Iterator[tuple[str, nn.Module]]:
    """(path, norm) for each LayerNorm / GroupNorm inside a matched parent, in module order."""
    seen: set[int] = set()
    for parent_path, parent in root.named_modules():
        if not parent_match({c.__name__ for c in type(parent).__mro__}):
            continue
        for child_path, child in parent.named_modules():
            if isinstance(child, NORM_TYPES) and child.weight is not None and id(child) not in seen:
                seen.add(id(child))
                yield (f"{parent_path}.{child_path}" if parent_path else child_path), child


def build_norm_modules(root: nn.Module, prefix: str, parent_match, path_fn,
                       kw: dict[str, Any]) -> dict[str, NormModule]:
    out: dict[str, NormModule] = {}
    for path, child in find_norms(root, parent_match):
        name = prefix + path_fn(path).replace(".", "_")
        out[name] = NormModule(name, child, multiplier=kw["multiplier"], module_dropout=kw["module_dropout"])
    return out
