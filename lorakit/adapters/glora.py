"""GLoRA (LyCORIS "glora", file format of LyCORIS >= 3). EXPERIMENTAL: ComfyUI loads it,
Forge partly, A1111 and diffusers not (docs/adapters.md "Who loads what").

delta W = s * (W @ A1 @ A2 + B1 @ B2), s = alpha / dim:
- A acts on the input channels: a2.weight (r, in[,1,1]), a1.weight (in, r[,1,1]); for a conv,
  W's spatial axes are kept: (W A1 A2)[o, c, k, l] = sum_ij W[o, i, k, l] a1[i, j] a2[j, c].
- B is a LoRA: b2.weight (r, in[, k, k]) with the base conv's stride/padding, b1.weight (out, r[,1,1]).
Init (LyCORIS): a1, b1 kaiming_uniform(a=sqrt 5), a2, b2 zero, so a fresh adapter changes nothing.
Forward: one op with W + m * delta W (the values of org(x) + op(x, delta W) with one full-size op
instead of two). network_dropout drops elements of delta W while training; rank_dropout does not
apply; module_dropout does. Max-norm scales a1, a2, b1, b2 by sqrt(ratio). ``use_tucker`` is accepted
and ignored (LyCORIS 4.1.3's GLoRA never builds its Tucker form either).
Targets as LoCon: 3x3 convs always (conv_dim / conv_alpha default to network_dim / network_alpha).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .base import AdapterModule, kaiming_down_
from .declare import LYCORIS_GUI_ARGS, LYCORIS_MODULE, NO, FileFormat, GuiLoraType, Loads, LOADS, has_all, shape0
from .registry import register

GLORA = FileFormat("glora", has_all("a1.weight", "b1.weight"),
                   {"A1111": Loads(NO), "Forge": Loads("partial"), "ComfyUI": LOADS, "diffusers": Loads(NO),
                    "LyCORIS": LOADS}, rank=shape0("a2.weight"), kernel_key="b2.weight", experimental=True)


@register("glora")
class GLoRAModule(AdapterModule):
    LYCORIS_CONV_DEFAULTS = True
    network_module = LYCORIS_MODULE
    lycoris_algos = ("glora",)
    gui_lora_types = {"LyCORIS/GLoRA": GuiLoraType(LYCORIS_MODULE, LYCORIS_GUI_ARGS)}
    file_formats = (GLORA,)
    experimental = True
    ARGS: dict[str, Any] = {"use_tucker": False}
    UNWRITTEN_ARGS = ("use_tucker",)

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        dev, r = org.weight.device, self.dim
        if isinstance(org, nn.Conv2d):
            cin, cout = org.in_channels, org.out_channels
            self.a2 = nn.Conv2d(cin, r, 1, bias=False, device=dev)
            self.a1 = nn.Conv2d(r, cin, 1, bias=False, device=dev)
            self.b2 = nn.Conv2d(cin, r, org.kernel_size, org.stride, org.padding, org.dilation, bias=False, device=dev)
            self.b1 = nn.Conv2d(r, cout, 1, bias=False, device=dev)
        else:
            cin, cout = org.in_features, org.out_features
            self.a2 = nn.Linear(cin, r, bias=False, device=dev)
            self.a1 = nn.Linear(r, cin, bias=False, device=dev)
            self.b2 = nn.Linear(cin, r, bias=False, device=dev)
            self.b1 = nn.Linear(r, cout, bias=False, device=dev)
        if dev.type != "meta":
            kaiming_down_(self.a1.weight)
            kaiming_down_(self.b1.weight)
            nn.init.zeros_(self.a2.weight)
            nn.init.zeros_(self.b2.weight)

    def param_dtype(self) -> torch.dtype:
        return self.a1.weight.dtype

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.plain_call(args, kwargs):
            return super().forward(x, *args, **kwargs)
        return self.merged_call(x, lambda: self.dropped(self.delta_weight()))

    def delta_weight(self) -> torch.Tensor:
        W = self.org.weight.to(self.a1.weight.dtype)
        a1, a2 = self.a1.weight.flatten(1), self.a2.weight.flatten(1)  # (in, r), (r, in)
        wa = torch.einsum("oi...,ir,rc->oc...", W, a1, a2)
        wb = (self.b1.weight.flatten(1) @ self.b2.weight.flatten(1)).view(W.shape)
        return (wa + wb) * self.scale

    @torch.no_grad()
    def scale_delta(self, ratio: float) -> None:
        r = ratio ** 0.5
        for m in (self.a1, self.a2, self.b1, self.b2):
            m.weight.mul_(r)

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        return {"a1.weight": self.a1.weight, "a2.weight": self.a2.weight, "b1.weight": self.b1.weight,
                "b2.weight": self.b2.weight, "alpha": self.alpha}
