"""LoHa: the Hadamard product of two low-rank matrices (LyCORIS "loha"; docs/adapters.md).

delta W = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / dim, in the wrapped weight's shape.
- Linear / 1x1 conv / 3x3 conv without Tucker: w_a (out, r), w_b (r, in*k*k).
- 3x3 conv with ``use_tucker``: hada_t (r, r, k, k), w_a (r, out), w_b (r, in); each half is
  the Tucker product W[o, i, :, :] = sum_{p,q} w_a[p, o] t[p, q, :, :] w_b[q, i].
Init (LyCORIS): w1_b, w2_b ~ N(0, 1); w1_a ~ N(0, 0.1); w2_a = 0 (a fresh adapter changes
nothing); t1, t2 ~ N(0, 0.1). Tensors: hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b, alpha,
[hada_t1, hada_t2]. Loaders: scale = alpha / hada_w1_b.shape[0].

Forward: one merged op (merged.py).

Dropouts (only while training, docs/adapters.md "Dropouts"; LyCORIS ignores plain dropout here):
- network_dropout: dropout on the elements of delta W (scaled 1/(1-p)), one mask per forward.
- rank_dropout: each rank of each low-rank factor dropped with p, the factor scaled 1/(1-p),
  one mask per forward (the merged op shares one weight across the batch, so the mask is not
  per sample as in kohya's LoRA bypass).
- module_dropout: the whole delta skipped with p.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .declare import (LOADERS, LOADS, LYCORIS_LINEAR_GUI_ARGS, LYCORIS_MODULE, NO, FileFormat, GuiLoraType, Loads,
                      has_all, shape0)
from .dora import DORA_ARGS
from .merged import MergedOpModule
from .registry import register

LOHA = FileFormat("loha", has_all("hada_w1_a"), {**{ui: LOADS for ui in LOADERS}, "diffusers": Loads(NO)},
                  rank=shape0("hada_w1_b"), tucker_key="hada_t1")


class HadamardProduct(torch.autograd.Function):
    """(a1 @ b1) * (a2 @ b2) * scale, saving only the four low-rank factors for backward.

    Autograd's own graph of this expression saves both full-size halves (a1 @ b1 and a2 @ b2, float32):
    8 bytes per parameter of every adapted layer, held from forward to backward wherever no
    checkpoint drops them. Here backward recomputes each half from its factors (two rank-r
    matmuls, a few microseconds) instead; the values are the same."""

    @staticmethod
    def forward(ctx, a1, b1, a2, b2, scale: float):  # type: ignore[override]
        ctx.save_for_backward(a1, b1, a2, b2)
        ctx.scale = scale
        return (a1 @ b1) * (a2 @ b2) * scale

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a1, b1, a2, b2 = ctx.saved_tensors
        # grad * scale first: the order autograd's own graph of the expression uses
        return (*_factor_grads(grad * ctx.scale, a1, b1, a2, b2), None)


class HadamardMerged(torch.autograd.Function):
    """W + value * (a1 @ b1) * (a2 @ b2), the merged weight in one addcmul after the two matmuls.

    Three kernels where delta W then the sum take five (matmul, matmul, product, scale, sum), and
    two full-size passes fewer per forward. The sum is rounded once (addcmul computes in float32
    for bfloat16), not after each product. Backward as HadamardProduct's: W is frozen."""

    @staticmethod
    def forward(ctx, w, a1, b1, a2, b2, value: float):  # type: ignore[override]
        ctx.save_for_backward(a1, b1, a2, b2)
        ctx.value = value
        return torch.addcmul(w.reshape(a1.shape[0], -1), a1 @ b1, a2 @ b2, value=value).view(w.shape)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a1, b1, a2, b2 = ctx.saved_tensors
        grad = grad.reshape(a1.shape[0], -1)
        return (None, *_factor_grads(grad if ctx.value == 1 else grad * ctx.value, a1, b1, a2, b2), None)


def _factor_grads(grad: torch.Tensor, a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor
                  ) -> tuple[torch.Tensor, ...]:
    """Gradients of a1, b1, a2, b2 for `grad` of (a1 @ b1) * (a2 @ b2), each half recomputed."""
    g1 = grad * (a2 @ b2)  # d/d(a1 @ b1)
    g2 = grad * (a1 @ b1)
    return g1 @ b1.T, a1.T @ g1, g2 @ b2.T, a2.T @ g2


def _normal_(t: torch.Tensor, std: float) -> None:
    if t.device.type != "meta":
        nn.init.normal_(t, std=std)


@register("loha")
class LoHaModule(MergedOpModule):
    lycoris_algos = ("loha",)
    gui_lora_types = {"LyCORIS/LoHa": GuiLoraType(LYCORIS_MODULE, LYCORIS_LINEAR_GUI_ARGS)}
    file_formats = (LOHA,)
    ARGS = {"use_tucker": False, **DORA_ARGS}

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        (out_ch, in_ch, ksize), r, param = self.layout(), self.dim, self.new_param
        dev = org.weight.device
        self.tucker = bool(self.args.get("use_tucker")) and self.is_conv and ksize != (1, 1)

        if self.tucker:
            self.hada_w1_a, self.hada_w1_b = param(r, out_ch), param(r, in_ch)
            self.hada_w2_a, self.hada_w2_b = param(r, out_ch), param(r, in_ch)
            self.hada_t1, self.hada_t2 = param(r, r, *ksize), param(r, r, *ksize)
            _normal_(self.hada_t1, 0.1)
            _normal_(self.hada_t2, 0.1)
        else:
            flat_in = org.weight[0].numel()  # in * k * k
            self.hada_w1_a, self.hada_w1_b = param(out_ch, r), param(r, flat_in)
            self.hada_w2_a, self.hada_w2_b = param(out_ch, r), param(r, flat_in)
        _normal_(self.hada_w1_b, 1.0)
        _normal_(self.hada_w1_a, 0.1)
        _normal_(self.hada_w2_b, 1.0)
        if dev.type != "meta":
            nn.init.zeros_(self.hada_w2_a)

    def _half(self, a: torch.Tensor, b: torch.Tensor, t: Optional[torch.Tensor],
              keep: Optional[torch.Tensor]) -> torch.Tensor:
        """One Hadamard factor in the weight's shape; `keep` masks its ranks (those of w_a)."""
        if t is None:
            if keep is not None:
                a = a * keep
            return (a @ b).reshape(self.org.weight.shape)
        if keep is not None:
            a = a * keep[:, None]
        return torch.einsum("pqkl,po,qi->oikl", t, a, b)

    def delta_weight(self, train: bool = False) -> torch.Tensor:  # type: ignore[override]
        dev = self.hada_w1_a.device
        k1 = self.rank_keep(self.dim, dev) if train else None
        k2 = self.rank_keep(self.dim, dev) if train else None
        if not self.tucker:
            a1 = self.hada_w1_a if k1 is None else self.hada_w1_a * k1
            a2 = self.hada_w2_a if k2 is None else self.hada_w2_a * k2
            dw = HadamardProduct.apply(a1, self.hada_w1_b, a2, self.hada_w2_b, self.scale)
            return dw.reshape(self.org.weight.shape)
        t1 = self.hada_t1 if self.tucker else None
        t2 = self.hada_t2 if self.tucker else None
        w1 = self._half(self.hada_w1_a, self.hada_w1_b, t1, k1)
        w2 = self._half(self.hada_w2_a, self.hada_w2_b, t2, k2)
        return w1 * w2 * self.scale

    def fused_weight(self) -> Optional[torch.Tensor]:
        w = self.org.weight
        # a channels_last weight would be copied to reshape it; the two-step sum keeps its format
        if self.tucker or w.requires_grad or not w.is_contiguous():
            return None
        a1, b1, a2, b2 = self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b
        # the matmuls' dtype: the autocast dtype, else the factors'; the sum needs the weight's
        dtype = torch.get_autocast_dtype(w.device.type) if torch.is_autocast_enabled(w.device.type) else a1.dtype
        if dtype != w.dtype or a1.device != w.device:
            return None
        return HadamardMerged.apply(w, a1, b1, a2, b2, self.scale * self.multiplier)

    @torch.no_grad()
    def scale_delta(self, ratio: float) -> None:
        r = ratio ** 0.25  # delta W is linear in each of the four factors
        for p in (self.hada_w1_a, self.hada_w1_b, self.hada_w2_a, self.hada_w2_b):
            p.mul_(r)

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        out = {"hada_w1_a": self.hada_w1_a, "hada_w1_b": self.hada_w1_b,
               "hada_w2_a": self.hada_w2_a, "hada_w2_b": self.hada_w2_b}
        if self.tucker:
            out.update(hada_t1=self.hada_t1, hada_t2=self.hada_t2)
        out.update(self.dora_tensors())
        out["alpha"] = self.alpha
        return out

    def extra_repr(self) -> str:
        return super().extra_repr() + (", tucker" if self.tucker else "")
