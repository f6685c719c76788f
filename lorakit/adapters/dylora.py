"""DyLoRA: LoRA trained at a random rank each step, saved as a plain LoRA file.

Training (module and wrapped layer in training mode): each forward draws b uniformly from
1..dim/unit with torch's generator (so a seed reproduces the ranks, and gradient
checkpointing, which restores the RNG state, recomputes the same rank) and runs the LoRA
truncated to its first r = b*unit ranks; the ranks below r - unit are detached (only the
newest block learns, as in kohya's and LyCORIS's DyLoRA). In eval the full rank is used.

The scale is alpha/dim at every truncated rank: the loaders' rule (alpha / lora_down.shape[0])
then reproduces the trained effect at full rank. (LyCORIS 4.1.3 trains with alpha/blocks, and
kohya with alpha/dim * sqrt(dim/r), so their files do not load as they trained.)

Tensors: lora_down.weight, lora_up.weight (4-D for convs), alpha -- the LoRA/LoCon format, so
every loader reads the file. ``unit`` (kohya) or ``block_size`` (LyCORIS) must divide the rank.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .declare import LYCORIS_GUI_ARGS, LYCORIS_MODULE, GuiLoraType
from .lora import LoRAModule
from .registry import register


@register("dylora")
class DyLoRAModule(LoRAModule):
    network_module = "networks.dylora"
    lycoris_algos = ("dylora",)
    gui_lora_types = {"Kohya DyLoRA": GuiLoraType("networks.dylora", ("conv", "unit")),
                      "LyCORIS/DyLoRA": GuiLoraType(LYCORIS_MODULE, (*LYCORIS_GUI_ARGS, "unit"))}
    metadata_label = "dylora"  # its files are LoRA files; only ss_network_module / algo tell them apart
    # use_tucker: LyCORIS/DyLoRA configs carry it; DyLoRA has no Tucker form (ignored, as LyCORIS does)
    ARGS: dict[str, Any] = {"unit": 1, "block_size": 0, "use_tucker": False}
    # sd-scripts' networks.dylora and LyCORIS's DyLoRA take neither (LyCORIS's has no lora_up parameters)
    BLOCKWISE = False
    LORAPLUS = False
    TRAIN_NORM = True

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        self.unit = unit_of(self.args)
        if self.unit < 1 or self.dim % self.unit:
            raise ConfigError(f"{name}: DyLoRA rank {self.dim} is not a multiple of unit {self.unit}",
                              key="network_args", fix="choose a unit that divides network_dim and conv_dim")
        self.last_rank: Optional[int] = None  # the rank of the last training forward

    def draw_rank(self) -> int:
        b = int(torch.randint(1, self.dim // self.unit + 1, (1,)).item())
        return b * self.unit

    def scaled_delta(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        if not self.dropouts_active():
            return super().scaled_delta(x)
        r = self.last_rank = self.draw_rank()
        down, up = self.lora_down.weight, self.lora_up.weight
        k = r - self.unit
        down = torch.cat([down[:k].detach(), down[k:r]])
        up = torch.cat([up[:, :k].detach(), up[:, k:r]], dim=1)
        h, factor = self.rank_dropouts(self.down_op(x, down))
        return self.up_op(h, up), self.scale * factor

    @classmethod
    def network_args(cls, cfg: Any) -> dict[str, str]:
        """kohya's networks.dylora args: conv_dim/conv_alpha and unit (block_size folded in)."""
        return {**super().network_args(cfg), "unit": str(unit_of(cls.parse_args(cfg)))}


def unit_of(opts: dict[str, Any]) -> int:
    """LyCORIS's block_size wins when given (> 0), else kohya's unit."""
    return int(opts["block_size"]) if opts.get("block_size") else int(opts["unit"])

