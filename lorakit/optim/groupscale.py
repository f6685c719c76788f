"""Different learning rates per parameter group for Prodigy and the D-Adaptation family.

The reference optimizers estimate one step size `d` for the whole model and refuse
(Prodigy, DAdaptAdam, DAdaptLion, DAdaptSGD) or silently ignore (DAdaptAdaGrad,
DAdaptAdan) groups whose lr differ. kohya users set text_encoder_lr != unet_lr and
expect it to mean something, so we define it (docs/optimizers.md):

    Let L = max over groups of the group's current lr (after the schedule).
    The reference optimizer runs unchanged with every group at lr L (groups at lr 0
    stay at 0, which the references already support: they are left out of the
    estimate). Each group's parameter change of that step is then multiplied by
    r_g = lr_g / L.

So one `d` is estimated exactly as the reference does at lr L, and group g moves with
the effective step size d * lr_g (the same form as Adam's lr_g): its Adam/Lion/SGD
direction is the reference's, its length is scaled by r_g, weight decay included.
With equal lrs (r_g = 1 everywhere) the reference step runs alone, bit for bit.
`d * group['lr']` is therefore each group's effective d*lr, which is what the loop logs.

This holds for optimizers that step by increments (SCALABLE below); the others
refuse different lrs (optimizers.build_optimizer).

The class is a subclass of the reference (so `isinstance`, state_dict and the
schedulers keep working); `scaled_class(cls)` makes and caches it.
"""
from __future__ import annotations

from typing import Any

import torch

_CACHE: dict[type, type] = {}


class GroupScaleMixin:
    """Mixed in before a reference optimizer class; see the module doc for the semantics."""

    param_groups: list[dict[str, Any]]

    def step(self, closure=None):  # type: ignore[override]
        lrs = [float(g["lr"]) for g in self.param_groups]
        top = max(lrs, default=0.0)
        if top <= 0.0 or all(lr in (top, 0.0) for lr in lrs):
            return super().step(closure)  # type: ignore[misc]
        ratios = [lr / top for lr in lrs]
        saved: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
        for g, r in zip(self.param_groups, ratios):
            keep = [] if r == 1.0 else [(p, p.detach().clone()) for p in g["params"] if p.grad is not None]
            saved.append(keep)
            g["lr"] = top if r > 0.0 else 0.0
        try:
            loss = super().step(closure)  # type: ignore[misc]
        finally:
            for g, lr in zip(self.param_groups, lrs):
                g["lr"] = lr
        with torch.no_grad():
            for keep, r in zip(saved, ratios):
                for p, before in keep:
                    # p <- before + r * (p - before)
                    p.sub_(before).mul_(r).add_(before)
        return loss


def scaled_class(cls: type) -> type:
    """`cls` with per-group lr ratios (GroupScaleMixin); cached, named like the reference."""
    if cls not in _CACHE:
        _CACHE[cls] = type(cls.__name__, (GroupScaleMixin, cls), {
            "__doc__": f"{cls.__module__}.{cls.__name__} with per-group lr ratios (lorakit.optim.groupscale).",
            "__module__": __name__,
        })
    return _CACHE[cls]


# Optimizers whose step is an increment p += -step_size * direction: scaling a group's
# increment is scaling its step size. DAdaptSGD and DAdaptAdaGrad are dual averaging
# (p is recomputed from x0 and the gradient sum) and DAdaptAdan mixes p into its decay
# term, so a post-hoc scale is not a step-size scale there: they refuse different lrs.
SCALABLE = frozenset({"Prodigy", "DAdaptAdam", "DAdaptAdamPreprint", "DAdaptLion"})


def is_adaptive(cls: type) -> bool:
    """Prodigy and the D-Adaptation family: one adapted step size d for all groups."""
    root = getattr(cls, "__module__", "").split(".")[0]
    return root in ("prodigyopt", "dadaptation") or any(
        getattr(b, "__module__", "").split(".")[0] in ("prodigyopt", "dadaptation") for b in cls.__mro__[1:])
