"""The base adapter module: wraps one nn.Linear / nn.Conv2d of the frozen model.

As kohya does, the original module stays in place (so the model's state_dict and
gradient checkpointing are unaffected) and only its forward is replaced. Dropouts
follow the wrapped module's train/eval mode, so sampling with the model in eval
mode never drops anything.
"""
from __future__ import annotations

import torch
from torch import nn


class AdapterModule(nn.Module):
    algo = "base"

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: float | None, *,
                 dropout: float | None = None, rank_dropout: float | None = None,
                 module_dropout: float | None = None):
        super().__init__()
        self.name = name
        self.dim = dim
        alpha = float(dim if alpha in (None, 0) else alpha)
        self.register_buffer("alpha", torch.tensor(alpha))
        self.scale = alpha / dim
        self.multiplier = 1.0
        self.dropout, self.rank_dropout, self.module_dropout = dropout, rank_dropout, module_dropout
        self._org = [org]  # a list keeps the frozen module out of this module's parameters
        self._org_forward = None

    @property
    def org(self) -> nn.Module:
        return self._org[0]

    @property
    def is_conv(self) -> bool:
        return isinstance(self.org, nn.Conv2d)

    def apply_to(self) -> None:
        if self._org_forward is None:
            self._org_forward = self.org.forward
            self.org.forward = self.forward

    def restore(self) -> None:
        if self._org_forward is not None:
            self.org.forward = self._org_forward
            self._org_forward = None

    @property
    def active_training(self) -> bool:
        return self.org.training and torch.is_grad_enabled()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self._org_forward(x, *args, **kwargs)
        if self.multiplier == 0:
            return out
        if self.module_dropout and self.active_training and torch.rand(()) < self.module_dropout:
            return out
        return out + self.delta_forward(x) * (self.multiplier * self.scale)

    # --- per algorithm -------------------------------------------------------------
    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's output for input x, before multiplier and scale."""
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor:
        """delta W (same shape as the original weight), before multiplier and scale."""
        raise NotImplementedError

    def scale_delta(self, ratio: float) -> None:
        """Scale delta W by `ratio` (for max-norm)."""
        raise NotImplementedError

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        """Tensor names (without the module prefix) as the kohya/LyCORIS file format has them."""
        raise NotImplementedError

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError
