"""iA3 (LyCORIS "ia3"): the wrapped weight scaled per channel, W' = W * (1 + w).

- w has one value per output channel (the layer's output scaled, bias untouched), or per
  input channel when the module trains on its input (the input scaled: x * (1 + w)).
- Targets (docs/adapters.md "Default targets"): to_k, to_v, ff.net.2 in the UNet's Transformer2DModel blocks,
  k_proj, v_proj, mlp.fc2 in the text encoder (80 + 36 modules on SD1.5).
- ``train_on_input`` (network arg, default False) applies to ff.net.2 / mlp.fc2 only, as in
  LyCORIS's own iA3 preset; LyCORIS never read it from network args, lorakit honours it.
- Tensors: ``weight`` (C,) for a Linear, (1, C, 1, 1) for a conv (LyCORIS's shape), and
  ``on_input`` (0-dim bool). No alpha: loaders apply no alpha/rank scale to iA3.
- init w = 0 (a fresh adapter changes nothing). network_dropout drops entries of w
  (inverted dropout) in training; rank_dropout does not apply (there is no rank).
- Max-norm: delta W = W * w is linear in w, so scale_delta multiplies w.
- Loaders: A1111 only (Forge, ComfyUI and diffusers do not load iA3 files).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import CONV1X1, LINEAR, AdapterModule, RankSettings, TargetRules
from .declare import LYCORIS_MODULE, NO, FileContext, FileFormat, GuiLoraType, Loads
from .frobenius import ChannelScale, NormFactors
from .registry import register

UNET_TARGETS = ("to_k", "to_v")
TE_TARGETS = ("k_proj", "v_proj", "fc2")
INPUT_SIDE_SUFFIXES = ("_ff_net_2", "_mlp_fc2")  # kohya names of the layers train_on_input acts on


def _on_input(ts: dict[str, torch.Tensor]) -> bool:
    return "on_input" in ts and bool(ts["on_input"].item())


def _a1111(ctx: FileContext) -> Loads:
    """A1111 loads SD2's text-encoder attention only as whole q/k/v/out sets: iA3's k/v go unused."""
    kv = [n for n in ctx.modules if n.startswith("lora_te_") and n.endswith(("_k_proj", "_v_proj"))]
    if not (kv and ctx.sd2()):
        return Loads("yes")
    return Loads("partial", f"on SD2 A1111 skips the {len(kv)} text-encoder k_proj/v_proj modules: it takes SD2's "
                            "text-encoder attention only with q and out")


IA3 = FileFormat(
    "ia3", lambda ts: "weight" in ts and ("on_input" in ts or ts["weight"].dim() in (1, 4)),
    {"A1111": _a1111, "Forge": Loads(NO), "ComfyUI": Loads(NO, "ComfyUI takes none of iA3's keys"),
     "diffusers": Loads(NO), "LyCORIS": Loads(NO, "lycoris-lora 4.1.3 cannot rebuild iA3 modules from a file")},
    options=lambda ts: {"train_on_input": True} if _on_input(ts) else {},
    rankless=lambda ts: f"no rank (scales {'inputs' if _on_input(ts) else 'outputs'} per channel)",
    notes=("iA3 files load only in A1111 (not Forge, ComfyUI or diffusers)",))


def ia3_child(path: str, module: nn.Module) -> bool:
    """to_k/to_v/ff.net.2 inside Transformer2DModel; k_proj/v_proj/fc2 inside the CLIP blocks."""
    return path.rsplit(".", 1)[-1] in UNET_TARGETS + TE_TARGETS or path == "ff.net.2" \
        or path.endswith(".ff.net.2")


@register("ia3")
class IA3Module(AdapterModule):
    network_module = LYCORIS_MODULE
    lycoris_algos = ("ia3",)
    gui_lora_types = {"LyCORIS/iA3": GuiLoraType(LYCORIS_MODULE, ("train_on_input",))}
    file_formats = (IA3,)
    has_rank = False
    ARGS: dict[str, Any] = {"train_on_input": False}

    def __init__(self, name: str, org: nn.Module, dim: int = 1, alpha: Optional[float] = None, **kw: Any):
        super().__init__(name, org, 1, None, **kw)  # no rank, no alpha
        self.on_input = bool(self.args["train_on_input"]) and name.endswith(INPUT_SIDE_SUFFIXES)
        w = org.weight
        channels = w.shape[1] if self.on_input else w.shape[0]
        shape = (1, channels, 1, 1) if self.is_conv else (channels,)
        self.weight = nn.Parameter(torch.zeros(shape, device=w.device))

    def param_dtype(self) -> torch.dtype:
        return self.weight.dtype

    def scale_vector(self) -> torch.Tensor:
        """w as applied this call: network_dropout drops entries in training."""
        w = self.weight
        if self.dropout and self.dropouts_active():
            w = F.dropout(w, p=self.dropout, training=True)
        return w

    def _channels(self, w: torch.Tensor, ndim: int) -> torch.Tensor:
        """w broadcast on the channel axis of an activation with ndim dims (1 for convs, last for linears)."""
        w = w.reshape(-1)
        return w.view(1, -1, *([1] * (ndim - 2))) if self.is_conv else w

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.on_input:
            return super().forward(x, *args, **kwargs)
        # output side: delta = (org(x) - bias) * w, no second matmul
        out, skip = self.base_output(x, *args, **kwargs)
        if skip:
            return out
        y = out.to(self.weight.dtype)
        bias = self.org.bias
        if bias is not None:
            y = y - self._channels(bias.to(y.dtype), y.dim())
        delta = y * self._channels(self.scale_vector(), y.dim())
        return self.add_delta(out, delta)

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.scale_vector()
        if self.on_input:
            return self.op(x * self._channels(w, x.dim()).to(x.dtype), self.org.weight.to(x.dtype))
        y = self.op(x, self.org.weight.to(x.dtype))
        return y * self._channels(w, y.dim()).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        W = self.org.weight.float()
        w = self.weight.float().reshape(-1).to(W.device)
        if self.on_input:
            return W * w.view(1, -1, *([1] * (W.dim() - 2)))
        return W * w.view(-1, *([1] * (W.dim() - 1)))

    @torch.no_grad()
    def merge(self, multiplier: Optional[float] = None) -> None:
        m = self.multiplier if multiplier is None else multiplier
        w = self.org.weight
        w.copy_((w.float() + m * self.delta_weight()).to(w.dtype))

    def norm_factors(self) -> NormFactors:
        return 1.0, (ChannelScale(self.weight, self.org.weight, 1 if self.on_input else 0),)

    def delta_scalings(self, ratio: float) -> list[tuple[torch.Tensor, float]]:
        return [(self.weight, ratio)]

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "on_input": torch.tensor(self.on_input)}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "weight" not in tensors or set(tensors) - {"weight", "on_input"}:
            raise self.other_tensors(tensors, ("on_input", "weight"))
        on_input = bool(tensors["on_input"].item()) if "on_input" in tensors else False
        v = tensors["weight"]
        if on_input != self.on_input or v.numel() != self.weight.numel():
            raise ConfigError(f"{self.name}: the file scales the layer's {'input' if on_input else 'output'} "
                              f"({v.numel()} values), this module its {'input' if self.on_input else 'output'} "
                              f"({self.weight.numel()})", key="network_args",
                              fix=f"set network_args train_on_input to {on_input}")
        with torch.no_grad():
            self.weight.copy_(v.reshape(self.weight.shape))

    def refresh_scale(self) -> None:
        self.scale = 1.0

    def extra_repr(self) -> str:
        return f"{self.name}, {'input' if self.on_input else 'output'} channels={self.weight.numel()}"

    # --- network hooks ---------------------------------------------------------------
    @classmethod
    def target_rules(cls, cfg: Any) -> TargetRules:
        return TargetRules(conv3x3=False, child_filter=ia3_child)

    @classmethod
    def rank_settings(cls, cfg: Any) -> RankSettings:
        return RankSettings({LINEAR: (1, None), CONV1X1: (1, None)})

