"""The merged-op form shared by LoHa, LoKr, Diag-OFT and BOFT.

Such an algorithm rebuilds delta W each forward and runs one op of the wrapped layer with
W + multiplier * delta W, instead of the base op plus a second full-size op with delta W (on an
H100 one merged op costs +25-65% over the frozen layer against +90-145% for the 2-op path,
docs/adapters.md "Speed"; bench/adapter_ops.py measures it on the CPU: 0.6x the 2-op path on the
320-channel conv and the feed-forward). It is the same function of x; under fp16/bf16 base weights
the sum is rounded to the weight's precision, as LyCORIS's default (non-bypass) path does.

Dropouts while training, one mask per forward (the merged op shares one weight across the batch,
so no mask can be per sample as in kohya's LoRA bypass): network_dropout on the elements of
delta W (scaled 1/(1-p)); rank_dropout as the algorithm's ``delta_weight(train=True)`` applies
it; module_dropout skips the whole delta. The DoRA variant (dora.py) applies on top.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .base import AdapterModule
from .dora import DoRA


class MergedOpModule(DoRA, AdapterModule):
    """Base for algorithms that rebuild delta W: forward = op(x, W + m * delta W) + bias.

    Subclasses implement ``delta_weight(train=False)``; with train=True they apply the
    rank dropout (the network dropout is applied here) while dropouts are active.
    """
    LYCORIS_CONV_DEFAULTS = True

    network_module = "lycoris.kohya"  # the algorithms' own names are LyCORIS's algo names

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        self.init_dora()
        # set under gradient checkpointing for layers outside the checkpointed blocks
        # (train/speed.py): W + delta W is built again in backward instead of held through the step
        self.recompute_merged = False

    def layout(self) -> tuple[int, int, tuple[int, ...]]:
        """(output channels, input channels, kernel size) of the wrapped weight."""
        w = self.org.weight
        return w.shape[0], w.shape[1], tuple(w.shape[2:])

    def new_param(self, *shape: int) -> nn.Parameter:
        """An uninitialised float32 parameter beside the wrapped weight (meta included)."""
        return nn.Parameter(torch.empty(*shape, device=self.org.weight.device, dtype=torch.float32))

    def param_dtype(self) -> torch.dtype:
        return torch.float32

    def delta_weight(self, train: bool = False) -> torch.Tensor:  # type: ignore[override]
        raise NotImplementedError

    def rank_keep(self, r: int, device: torch.device) -> Optional[torch.Tensor]:
        """A (r,) 0/(1/(1-p)) rank mask while rank dropout is active, else None."""
        if not (self.rank_dropout and self.dropouts_active()):
            return None
        keep = (torch.rand(r, device=device) > self.rank_dropout).float()
        return keep / (1.0 - self.rank_dropout)

    def training_delta(self) -> torch.Tensor:
        active = self.dropouts_active()
        return self.applied_delta(self.dropped(self.delta_weight(train=active)))

    def fused_weight(self) -> Optional[torch.Tensor]:
        """W + multiplier * delta W built in fewer passes than delta W and then the sum, where the
        algorithm has such a form (LoHa); None: the two-step form. Called only while no dropout and
        no DoRA act."""
        return None

    def merged(self, x: torch.Tensor) -> torch.Tensor:
        dropouts = self.dropouts_active() and bool(self.dropout or self.rank_dropout or self.module_dropout)
        weight = None if dropouts or self.wd else self.fused_weight()
        if weight is None:
            return self.merged_call(x, self.training_delta)
        return self.weight_forward(x, weight)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.plain_call(args, kwargs):  # extra arguments keep the exact 2-op form
            return AdapterModule.forward(self, x, *args, **kwargs)
        if self.recompute_merged and torch.is_grad_enabled():  # the same draws again: RNG state is replayed
            return checkpoint(self.merged, x, use_reentrant=False)
        return self.merged(x)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x, self.training_delta().to(x.dtype))
