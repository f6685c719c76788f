"""LoKr: a Kronecker product of a small and a large factor (LyCORIS "lokr"; adapter-format.md).

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

Forward: one merged op (loha.MergedOpModule). Dropouts while training, one mask per forward:
network_dropout on the elements of delta W; rank_dropout on the ranks of each decomposed
factor (scaled 1/(1-p)), or on delta W's output rows when both factors are full (no ranks).
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn

from .base import kaiming_down_
from .dora import DORA_ARGS
from .loha import MergedOpModule
from .registry import register


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """(m, n), m <= n, m * n = dimension, as LyCORIS splits a LoKr dimension.

    A positive factor that divides the dimension is used as is. Otherwise m grows
    through the divisors of `dimension` while m < n and m <= factor (no limit for -1),
    so factor -1 gives the most balanced split (e.g. 320 -> (16, 20), 768 -> (24, 32)).
    """
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (m, n) if m <= n else (n, m)
    limit = dimension if factor < 0 else factor
    m, n = 1, dimension
    cand = 2
    while m < n:
        while dimension % cand:
            cand += 1
        if cand > limit:
            break
        m, n = cand, dimension // cand
        cand += 1
    return (m, n) if m <= n else (n, m)


def _kaiming_(t: torch.Tensor) -> None:
    if t.device.type != "meta":
        kaiming_down_(t)


@register("lokr")
class LoKrModule(MergedOpModule):
    ARGS = {"factor": -1, "decompose_both": False, "use_tucker": False, **DORA_ARGS}

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        w = org.weight
        dev, r = w.device, self.dim
        out_ch, in_ch = w.shape[0], w.shape[1]
        ksize = tuple(w.shape[2:])
        factor = int(self.args.get("factor", -1))
        a, b = factorization(out_ch, factor)
        c, d = factorization(in_ch, factor)
        self.shapes = ((a, b), (c, d))
        kk = math.prod(ksize) if ksize else 1

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape, device=dev, dtype=torch.float32))

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
        dw = torch.kron(self._w1(train), self._w2(train)).reshape(self.org.weight.shape) * self.scale
        if train and self.full_w1 and self.full_w2:
            keep = self.rank_keep(dw.shape[0], dw.device)
            if keep is not None:
                dw = dw * keep.view(-1, *([1] * (dw.dim() - 1)))
        return dw

    @torch.no_grad()
    def scale_delta(self, ratio: float) -> None:
        half = ratio ** 0.5  # each Kronecker factor takes sqrt(ratio)
        for full, names in ((self.full_w1, ("lokr_w1", "lokr_w1_a", "lokr_w1_b")),
                            (self.full_w2, ("lokr_w2", "lokr_w2_a", "lokr_w2_b"))):
            if full:
                getattr(self, names[0]).mul_(half)
            else:
                getattr(self, names[1]).mul_(half ** 0.5)
                getattr(self, names[2]).mul_(half ** 0.5)

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
