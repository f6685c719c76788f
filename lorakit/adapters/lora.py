"""LoRA and LoCon (kohya-ss/sd-scripts networks/lora.py semantics; docs/adapters.md).

delta W = up @ down * alpha / dim.
- Linear: down (r, in), up (out, r).
- 1x1 conv: down (r, in, 1, 1), up (out, r, 1, 1).
- 3x3 conv (LoCon): down (r, in, k, k) with the base conv's stride/padding/dilation, up (out, r, 1, 1).
Init: down kaiming_uniform(a=sqrt(5)), up zeros, so a fresh adapter changes nothing.
Forward is the bypass x -> down -> [network/rank dropout] -> up, the cheapest form for small ranks
on the CPU and for small layers. network_args merged_op=true runs one op with W + delta W instead
(faster on an H100 for the 64x64 3x3 convs and the feed-forward, docs/adapters.md "Speed");
it falls back to the bypass while network/rank dropout act, since their per-sample masks have no
merged form. Same values either way, to float rounding.

"lora" is kohya's networks.lora (3x3 convs only with conv_dim: kohya LoCon).
"locon" is LyCORIS's LoCon (lycoris.kohya, algo=locon): conv_dim defaults to network_dim and
conv_alpha to network_alpha, so 3x3 convs are always adapted; it adds the Tucker form and DoRA.
Without those both write the same tensors.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import CONV3X3, AdapterModule, kaiming_down_
from .declare import (GUI_BLOCK_ARGS, LOADERS, LOADS, LYCORIS_LINEAR_GUI_ARGS, LYCORIS_MODULE, NO, FileFormat,
                      GuiLoraType, Loads, has_all, shape0)
from .dora import DORA_ARGS, DoRA
from .forms import FormChoice
from .frobenius import LowRank, NormFactors
from .registry import register

DOWN, UP, MID = "lora_down.weight", "lora_up.weight", "lora_mid.weight"


def _kernel_down(ts: dict[str, torch.Tensor]) -> bool:
    down = ts[DOWN]
    return down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)


_LORA_KEYS = has_all(DOWN, UP)
# every loader reads the LoRA format (kohya LoCon's k x k down included)
LORA = FileFormat("lora", lambda ts: _LORA_KEYS(ts) and MID not in ts and not _kernel_down(ts),
                  {ui: LOADS for ui in LOADERS}, rank=shape0(DOWN), kernel_key=DOWN)
LOCON = FileFormat("locon", lambda ts: _LORA_KEYS(ts) and MID not in ts and _kernel_down(ts),
                   {ui: LOADS for ui in LOADERS}, rank=shape0(DOWN), kernel_key=DOWN)
LOCON_TUCKER = FileFormat(
    "locon-tucker", has_all(DOWN, UP, MID),
    {**{ui: LOADS for ui in LOADERS}, "diffusers": Loads(NO, "diffusers does not load lora_mid")},
    rank=shape0(DOWN), tucker_key=MID, notes=("Tucker (lora_mid) convs do not load in diffusers",))


@register("lora")
class LoRAModule(AdapterModule):
    network_module = "networks.lora"
    gui_lora_types = {"Standard": GuiLoraType("networks.lora", GUI_BLOCK_ARGS),
                      "Kohya LoCon": GuiLoraType("networks.lora", ("conv", *GUI_BLOCK_ARGS))}
    file_formats = (LORA, LOCON)
    ARGS: dict[str, Any] = {"merged_op": False}
    UNWRITTEN_ARGS = ("merged_op",)  # a runtime choice
    BLOCKWISE = True
    LORAPLUS = True
    TRAIN_NORM = False  # sd-scripts' networks.lora has no train_norm (LyCORIS LoCon: network_type locon)

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        dev = org.weight.device  # built beside the base weight (meta included), always float32
        if isinstance(org, nn.Conv2d):
            self.lora_down = nn.Conv2d(org.in_channels, self.dim, org.kernel_size, org.stride, org.padding,
                                       org.dilation, bias=False, device=dev)
            self.lora_up = nn.Conv2d(self.dim, org.out_channels, 1, 1, bias=False, device=dev)
        else:
            self.lora_down = nn.Linear(org.in_features, self.dim, bias=False, device=dev)
            self.lora_up = nn.Linear(self.dim, org.out_features, bias=False, device=dev)
        if dev.type != "meta":
            kaiming_down_(self.lora_down.weight)
            nn.init.zeros_(self.lora_up.weight)

    def param_dtype(self) -> torch.dtype:
        return self.lora_down.weight.dtype

    forms: Optional[FormChoice] = None  # set by the network with merged_op = "auto"

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        per_sample = self.dropouts_active() and bool(self.dropout or self.rank_dropout)
        mode = self.args.get("merged_op")
        if (not mode or per_sample or self.args.get("dora_wd") or not self.plain_call(args, kwargs)
                or (mode == "auto" and self.forms is not None and not self.forms.merged(self, x))):
            return super().forward(x, *args, **kwargs)
        return self.merged_call(x, self.delta_weight)

    def bypass_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The bypass form (forms.py times it against merged_form)."""
        return super().forward(x)

    def merged_form(self, x: torch.Tensor) -> torch.Tensor:
        return self.merged_forward(x, self.delta_weight())

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        delta, factor = self.scaled_delta(x)
        return delta * factor

    def scaled_delta(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        h, factor = self.rank_dropouts(self.down_op(x))
        return self.up_op(h), self.scale * factor

    # The factors' ops called directly: the same F.linear / F.conv2d as calling lora_down and lora_up,
    # without two nn.Module calls per forward (their Python costs more than a small layer's kernels
    # take to launch, and at batch 1 the host sets the pace of a GPU step). `down` / `up` default to
    # the factors' weights (DyLoRA passes truncated ones).
    def down_op(self, x: torch.Tensor, down: Optional[torch.Tensor] = None) -> torch.Tensor:
        # lora_down has the wrapped layer's kernel, stride, padding and dilation: the layer's own op
        return self.op(x, self.lora_down.weight if down is None else down)

    def up_op(self, h: torch.Tensor, up: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = self.lora_up.weight if up is None else up
        return F.conv2d(h, w) if self.is_conv else F.linear(h, w)

    def delta_weight(self, up: Optional[torch.Tensor] = None) -> torch.Tensor:
        up = self.lora_up.weight if up is None else up
        down = self.lora_down.weight
        if not self.is_conv:
            return (up @ down) * self.scale
        # (out, r, 1, 1) . (r, in, k, k) -> (out, in, k, k); a 1x1 conv is the same contraction
        return torch.einsum("or,rikl->oikl", up.flatten(1), down) * self.scale

    def norm_factors(self) -> NormFactors:
        return self.scale, (LowRank(self.lora_up.weight.flatten(1), self.lora_down.weight.flatten(1)),)

    def delta_scalings(self, ratio: float) -> list[tuple[torch.Tensor, float]]:
        r = ratio ** 0.5  # kohya scales both factors by sqrt(ratio)
        return [(self.lora_up.weight, r), (self.lora_down.weight, r)]

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        return {"lora_down.weight": self.lora_down.weight, "lora_up.weight": self.lora_up.weight,
                "alpha": self.alpha}


@register("locon")
class LoConModule(DoRA, LoRAModule):
    """LyCORIS-style LoCon defaults on kohya's targets (same tensors as kohya LoCon).

    ``use_tucker`` (``use_cp``): a 3x3 conv gets the Tucker form, down (r, in, 1, 1) ->
    mid (r, r, k, k) with the base conv's stride/padding/dilation -> up (out, r, 1, 1);
    delta W[o, c] = scale * sum_ij up[o, i] mid[i, j] down[j, c]; the file adds lora_mid.weight
    (A1111, Forge and ComfyUI load it; diffusers does not). Linear / 1x1 layers are plain LoRA.

    ``dora_wd`` (dora.py): W' = dora_scale * (W + delta W) / ||W + delta W||; the forward then
    runs the base op with W' - W (no bypass), rank dropout masks the ranks of up once per
    forward and network dropout the elements of delta W.
    """
    LYCORIS_CONV_DEFAULTS = True
    network_module = LYCORIS_MODULE  # LyCORIS's name for it; module_for() writes networks.lora where it can
    lycoris_algos = ("locon", "lora")
    gui_lora_types = {"LyCORIS/LoCon": GuiLoraType(LYCORIS_MODULE, LYCORIS_LINEAR_GUI_ARGS),
                      "LoCon": GuiLoraType(LYCORIS_MODULE, LYCORIS_LINEAR_GUI_ARGS)}  # the GUI's older name
    file_formats = (LORA, LOCON, LOCON_TUCKER)
    ARGS: dict[str, Any] = {**LoRAModule.ARGS, "use_tucker": False, **DORA_ARGS}
    BLOCKWISE = False  # LyCORIS has no block_dims / block lr weights
    TRAIN_NORM = True

    @classmethod
    def module_for(cls, cfg: Any) -> str:
        """networks.lora while it rebuilds the network exactly (it needs no LyCORIS install);
        lycoris.kohya (algo=locon) once the Tucker form or DoRA is on: networks.lora has neither
        lora_mid nor dora_scale."""
        args = cls.parse_args(cfg)
        return LYCORIS_MODULE if args["use_tucker"] or args["dora_wd"] else "networks.lora"

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        self.tucker = bool(self.args.get("use_tucker")) and self.kind == CONV3X3
        if self.tucker:
            dev = org.weight.device
            self.lora_down = nn.Conv2d(org.in_channels, self.dim, 1, bias=False, device=dev)
            self.lora_mid = nn.Conv2d(self.dim, self.dim, org.kernel_size, org.stride, org.padding, org.dilation,
                                      bias=False, device=dev)
            if dev.type != "meta":
                kaiming_down_(self.lora_down.weight)
                kaiming_down_(self.lora_mid.weight)
        self.init_dora()

    def dora_delta(self) -> torch.Tensor:
        """W' - W of DoRA, with this forward's dropouts while training."""
        up = self.lora_up.weight
        active = self.dropouts_active()
        if active and self.rank_dropout:
            keep = (torch.rand(self.dim, device=up.device) > self.rank_dropout).to(up.dtype)
            up = up * (keep / (1.0 - self.rank_dropout)).view(1, -1, *([1] * (up.dim() - 2)))
        dw = self.delta_weight(up)
        if active and self.dropout:
            dw = F.dropout(dw, p=self.dropout, training=True)
        return self.decomposed(dw)

    def scaled_delta(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        if self.wd:
            return self.op(x, self.dora_delta().to(x.dtype)), 1.0
        if not self.tucker:
            return super().scaled_delta(x)
        h, factor = self.rank_dropouts(self.lora_mid(self.lora_down(x)))
        return self.lora_up(h), self.scale * factor

    def norm_factors(self) -> NormFactors:
        return None if self.tucker else super().norm_factors()

    def delta_weight(self, up: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.tucker:
            return super().delta_weight(up)
        up = (self.lora_up.weight if up is None else up).flatten(1)
        mid, down = self.lora_mid.weight, self.lora_down.weight.flatten(1)
        return torch.einsum("oi,ijkl,jc->ockl", up, mid, down) * self.scale

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        out = super().tensors_to_save()
        if self.tucker:
            out["lora_mid.weight"] = self.lora_mid.weight
        out.update(self.dora_tensors())
        return out

