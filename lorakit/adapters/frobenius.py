"""||delta W||_F of every adapter module at once, for max-norm regularization (scale_weight_norms).

kohya's max-norm builds each module's full-size delta W every step to take its norm: a matmul, a
temporary as large as the layer's weight and a norm per module, several hundred kernels per step
on SD1.5 and a pass over every adapted weight. The norm of a product of small factors needs none
of it. Each adapter says what its delta W is made of (`AdapterModule.norm_factors`), and

    ||delta W|| = |scale| * prod ||factor||      (a Kronecker product's norm is its factors' product)

with, per kind of factor:
- Full(t): ||t||, all of them in one foreach norm;
- LowRank(up, down), delta = up @ down: ||up @ down||^2 = sum((up^T up) * (down down^T)), two
  r x r Gram matrices instead of the out x in product (the product itself when it is the smaller);
  factors of one shape are stacked and reduced together;
- ChannelScale(w, base, axis), the frozen base weight scaled per channel (iA3):
  sum_c w_c^2 ||base_c||^2, the base's channel norms taken once and kept.

So one step costs a few kernels per distinct factor shape, whatever the number of modules. A module
whose delta has no such form (LoHa, the OFTs, GLoRA, Tucker convs) returns None and is measured from
its delta_weight() as before. The values equal delta_weight().norm() to float32 rounding (tests).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch


@dataclass(frozen=True)
class Full:
    t: torch.Tensor


@dataclass(frozen=True)
class LowRank:
    up: torch.Tensor    # (out, r)
    down: torch.Tensor  # (r, in)


@dataclass(frozen=True)
class ChannelScale:
    w: torch.Tensor     # (C,): scales the base's channels along `axis`
    base: torch.Tensor  # the frozen weight (not trained: its channel norms are kept between calls)
    axis: int


Factor = Union[Full, LowRank, ChannelScale]
NormFactors = Optional[tuple[float, Sequence[Factor]]]


class FrobeniusNorms:
    """Computes many modules' ||delta W|| in one pass; one per network (it keeps the base norms)."""

    def __init__(self) -> None:
        self._channel_norms: dict[tuple[int, int], tuple[Any, int, torch.Tensor]] = {}
        self._index: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, mods: Sequence[Any]) -> torch.Tensor:
        """(len(mods),) float32: ||m.delta_weight()|| for each module, on the first module's device."""
        full: list[torch.Tensor] = []
        low: dict[tuple, list[LowRank]] = {}
        chan: list[tuple[torch.Tensor, torch.Tensor]] = []
        fallback: list[torch.Tensor] = []
        # where each factor's squared norm lands: (part, index in the part); parts are concatenated below
        slots: list[list[tuple[Any, int]]] = []
        scales: list[float] = []
        for m in mods:
            spec = m.norm_factors()
            if spec is None:
                slots.append([("fallback", len(fallback))])
                fallback.append(m.delta_weight().float().norm())
                scales.append(1.0)
                continue
            scale, factors = spec
            scales.append(abs(float(scale)))
            mine = []
            for f in factors:
                if isinstance(f, Full):
                    mine.append(("full", len(full)))
                    full.append(f.t)
                elif isinstance(f, LowRank):
                    key = ("low", tuple(f.up.shape), tuple(f.down.shape), f.up.dtype, f.up.device)
                    group = low.setdefault(key, [])
                    mine.append((key, len(group)))
                    group.append(f)
                else:
                    mine.append(("chan", len(chan)))
                    chan.append((f.w.reshape(-1), self._base_norms(f.base, f.axis)))
            slots.append(mine)

        parts: dict[Any, torch.Tensor] = {}
        if full:
            parts["full"] = _squares(torch._foreach_norm(full))
        for key, group in low.items():
            parts[key] = _low_rank_squares(group)
        if chan:
            ws = [w.float() for w, _ in chan]
            parts["chan"] = _squares(torch._foreach_norm(torch._foreach_mul(ws, [n for _, n in chan])))
        if fallback:
            parts["fallback"] = torch.stack(fallback).square()
        order = list(parts)
        offsets, n = {}, 0
        for k in order:
            offsets[k] = n
            n += parts[k].numel()
        width = max((len(s) for s in slots), default=1)
        rows = tuple(tuple(offsets[k] + i for k, i in s) + (n,) * (width - len(s)) for s in slots)
        dev = parts[order[0]].device
        index, scale_t = self._constants(rows, tuple(scales), dev)
        flat = torch.cat([parts[k].to(dev, torch.float32) for k in order] + [index.new_ones(1, dtype=torch.float32)])
        return flat[index].prod(dim=1).sqrt() * scale_t

    def _constants(self, rows: tuple, scales: tuple, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The gather index and the scales as device tensors, made once per layout (no copy per step)."""
        key = (rows, scales, str(dev))
        if key not in self._index:
            self._index.clear()  # one layout per network, unless the modules change
            self._index[key] = (torch.tensor(rows, dtype=torch.long, device=dev),
                                torch.tensor(scales, dtype=torch.float32, device=dev))
        return self._index[key]

    def _base_norms(self, base: torch.Tensor, axis: int) -> torch.Tensor:
        """||base|| per channel along `axis`, float32 (C,); recomputed only if base changes in place."""
        key = (id(base), axis)
        held = self._channel_norms.get(key)
        if held is not None and held[0]() is base and held[1] == base._version:
            return held[2]
        dims = [d for d in range(base.dim()) if d != axis]
        norms = torch.linalg.vector_norm(base.float(), dim=dims)
        self._channel_norms[key] = (weakref.ref(base), base._version, norms)
        return norms


def _squares(norms: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([x.float() for x in norms]).square()


def _low_rank_squares(group: list[LowRank]) -> torch.Tensor:
    """||up @ down||^2 for each factor of one shape, stacked: (len(group),)."""
    up = torch.stack([f.up for f in group]).float()        # (n, out, r)
    down = torch.stack([f.down for f in group]).float()    # (n, r, in)
    out, r = up.shape[1], up.shape[2]
    if r * r >= out * down.shape[2]:  # rank above the layer's size: the product is the smaller
        return (up @ down).square().sum(dim=(1, 2))
    gram = (up.mT @ up) * (down @ down.mT)
    return gram.sum(dim=(1, 2)).clamp_min(0)  # rounding can take an exact 0 a hair below
