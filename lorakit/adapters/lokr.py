"""LoKr: a Kronecker product of a small and a large factor (LyCORIS "lokr"; docs/adapters.md).

(a, b) = factorization(out, factor), (c, d) = factorization(in, factor), a <= b, c <= d;
delta W = kron(W1, W2) * scale reshaped to the wrapped weight, where
- W1 (a, c): lokr_w1, or lokr_w1_a (a, r) @ lokr_w1_b (r, c) with decompose_both and r < max(a, c)/2;
- W2 (b, d, k, k) (2-D (b, d) for a Linear): lokr_w2 when r >= max(b, d)/2, else
  lokr_w2_a (b, r) @ lokr_w2_b (r, d*k*k), or for a k>1 conv with use_tucker
  lokr_t2 (r, r, k, k) with lokr_w2_a (r, b), lokr_w2_b (r, d):
  W2[j, l] = sum_{p,q} t2[p, q] w2_a[p, j] w2_b[q, l].
scale = alpha / r; when both factors are full matrices there is no rank: scale 1 and the
stored alpha is r (LyCORIS), which every loader reads as scale 1 (no lokr_w1_b / lokr_w2_b).
Init (LyCORIS): lokr_w2 or lokr_w2_b zero (a fresh adapter changes nothing); every other
factor kaiming_uniform(a=sqrt 5).

Forward: one merged op (merged.MergedOpModule). Dropouts while training, one mask per forward:
network_dropout on the elements of delta W; rank_dropout on the ranks of each decomposed
factor (scaled 1/(1-p)), or on delta W's output rows when both factors are full (no ranks).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from .base import kaiming_down_
from .declare import (LOADERS, LOADS, LYCORIS_LINEAR_GUI_ARGS, LYCORIS_MODULE, NO, FileFormat, GuiLoraType, Loads,
                      shape0)
from .dora import DORA_ARGS
from .factorization import factorization
from .frobenius import Full, LowRank, NormFactors
from .merged import MergedOpModule
from .registry import register

_rank = shape0("lokr_w1_b", "lokr_w2_b")


def _rank_hint(ts: dict[str, torch.Tensor]) -> Optional[int]:
    """The rank, or for a module of full factors the alpha, which LyCORIS and lorakit store as dim."""
    r = _rank(ts)
    return r if r is not None or "alpha" not in ts else int(round(float(ts["alpha"])))


def _dim_fits(ts: dict[str, torch.Tensor], dim: int) -> bool:
    if _rank(ts) is None:
        b, d = ts["lokr_w2"].shape[:2]  # W2 is full exactly when dim >= max(b, d) / 2
        return dim >= max(b, d) / 2
    return _rank_hint(ts) == dim


LOKR = FileFormat("lokr", lambda ts: "lokr_w1" in ts or "lokr_w1_a" in ts,
                  {**{ui: LOADS for ui in LOADERS}, "diffusers": Loads(NO)},
                  rank=_rank, rank_hint=_rank_hint, dim_fits=_dim_fits, tucker_key="lokr_t2", kernel_key="lokr_w2",
                  options=lambda ts: {"decompose_both": True} if "lokr_w1_a" in ts else {},
                  rankless=lambda ts: "full-matrix factors")


def _kaiming_(t: torch.Tensor) -> None:
    if t.device.type != "meta":
        kaiming_down_(t)


@register("lokr")
class LoKrModule(MergedOpModule):
    lycoris_algos = ("lokr",)
    gui_lora_types = {"LyCORIS/LoKr": GuiLoraType(LYCORIS_MODULE,
                                                     (*LYCORIS_LINEAR_GUI_ARGS, "factor", "use_cp", "decompose_both"))}
    file_formats = (LOKR,)
    ARGS = {"factor": -1, "decompose_both": False, "use_tucker": False, **DORA_ARGS}

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        (out_ch, in_ch, ksize), r, param = self.layout(), self.dim, self.new_param
        dev = org.weight.device
        factor = int(self.args.get("factor", -1))
        a, b = factorization(out_ch, factor)
        c, d = factorization(in_ch, factor)
        self.shapes = ((a, b), (c, d))
        kk = math.prod(ksize) if ksize else 1

        self.full_w1 = not (self.args.get("decompose_both") and r < max(a, c) / 2)
        if self.full_w1:
            self.lokr_w1 = param(a, c)
            _kaiming_(self.lokr_w1)
        else:
            self.lokr_w1_a, self.lokr_w1_b = param(a, r), param(r, c)
            _kaiming_(self.lokr_w1_a)
            _kaiming_(self.lokr_w1_b)
        self.full_w2 = r >= max(b, d) / 2
        self.tucker = (not self.full_w2 and bool(self.args.get("use_tucker")) and self.is_conv
                       and ksize != (1, 1))
        if self.full_w2:
            self.lokr_w2 = param(b, d, *ksize)
            if dev.type != "meta":
                nn.init.zeros_(self.lokr_w2)
        else:
            if self.tucker:
                self.lokr_t2 = param(r, r, *ksize)
                self.lokr_w2_a, self.lokr_w2_b = param(r, b), param(r, d)
                _kaiming_(self.lokr_t2)
            else:
                self.lokr_w2_a, self.lokr_w2_b = param(b, r), param(r, d * kk)
            _kaiming_(self.lokr_w2_a)
            if dev.type != "meta":
                nn.init.zeros_(self.lokr_w2_b)
        if self.full_w1 and self.full_w2:  # no rank anywhere: LyCORIS stores alpha = dim, scale 1
            with torch.no_grad():
                self.alpha.fill_(float(self.dim))
        self.refresh_scale()

    def refresh_scale(self) -> None:
        if self.full_w1 and self.full_w2:
            self.scale = 1.0  # loaders: no lokr_w1_b / lokr_w2_b -> scale 1 whatever alpha says
        else:
            super().refresh_scale()

    def _w1(self, train: bool) -> torch.Tensor:
        if self.full_w1:
            return self.lokr_w1
        a = self.lokr_w1_a
        keep = self.rank_keep(self.dim, a.device) if train else None
        return (a * keep if keep is not None else a) @ self.lokr_w1_b

    def _w2(self, train: bool) -> torch.Tensor:
        """W2 flattened to (b, d*k*k)."""
        if self.full_w2:
            return self.lokr_w2.flatten(1)
        a = self.lokr_w2_a
        keep = self.rank_keep(self.dim, a.device) if train else None
        if self.tucker:
            if keep is not None:
                a = a * keep[:, None]
            return torch.einsum("pqkl,pj,qi->jikl", self.lokr_t2, a, self.lokr_w2_b).flatten(1)
        return (a * keep if keep is not None else a) @ self.lokr_w2_b

    def delta_weight(self, train: bool = False) -> torch.Tensor:  # type: ignore[override]
        # kron((a, c), (b, d*kk)) = (a*b, c*d*kk): row i*b+j, column l*d*kk + m -> (out, in, k, k)
        # the scale on W1, the small factor: one pass over (a, c) elements instead of the full-size delta W,
        # and none at scale 1 (both factors full, or alpha = dim)
        w1 = self._w1(train) if self.scale == 1 else self._w1(train) * self.scale
        dw = torch.kron(w1, self._w2(train)).reshape(self.org.weight.shape)
        if train and self.full_w1 and self.full_w2:
            keep = self.rank_keep(dw.shape[0], dw.device)
            if keep is not None:
                dw = dw * keep.view(-1, *([1] * (dw.dim() - 1)))
        return dw

    def norm_factors(self) -> NormFactors:
        # ||kron(W1, W2)|| = ||W1|| ||W2||; a Tucker W2 is built (it is the small (b, d*k*k) factor)
        w1 = Full(self.lokr_w1) if self.full_w1 else LowRank(self.lokr_w1_a, self.lokr_w1_b)
        w2 = (Full(self.lokr_w2) if self.full_w2 else Full(self._w2(False)) if self.tucker
              else LowRank(self.lokr_w2_a, self.lokr_w2_b))
        return self.scale, (w1, w2)

    def delta_scalings(self, ratio: float) -> list[tuple[torch.Tensor, float]]:
        half = ratio ** 0.5  # each Kronecker factor takes sqrt(ratio)
        out: list[tuple[torch.Tensor, float]] = []
        for full, names in ((self.full_w1, ("lokr_w1", "lokr_w1_a", "lokr_w1_b")),
                            (self.full_w2, ("lokr_w2", "lokr_w2_a", "lokr_w2_b"))):
            if full:
                out.append((getattr(self, names[0]), half))
            else:
                out += [(getattr(self, names[1]), half ** 0.5), (getattr(self, names[2]), half ** 0.5)]
        return out

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        if self.full_w1:
            out["lokr_w1"] = self.lokr_w1
        else:
            out.update(lokr_w1_a=self.lokr_w1_a, lokr_w1_b=self.lokr_w1_b)
        if self.full_w2:
            out["lokr_w2"] = self.lokr_w2
        else:
            out.update(lokr_w2_a=self.lokr_w2_a, lokr_w2_b=self.lokr_w2_b)
            if self.tucker:
                out["lokr_t2"] = self.lokr_t2
        out.update(self.dora_tensors())
        out["alpha"] = self.alpha
        return out

    def extra_repr(self) -> str:
        (a, b), (c, d) = self.shapes
        return (super().extra_repr() + f", w1=({a},{c}){'' if self.full_w1 else ' lowrank'}"
                f", w2=({b},{d}){'' if self.full_w2 else ' lowrank'}{', tucker' if self.tucker else ''}")
