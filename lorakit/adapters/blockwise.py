"""Block-wise ranks and learning rates of the SD1/SD2 UNet (sd-scripts networks/lora.py semantics).

sd-scripts counts 25 blocks: IN00-IN11, MID, OUT00-OUT11. A module's block comes from its
kohya name: ``(down|up)_blocks_<i>_(attentions|resnets)_<j>_`` is block 3*i + j of its side,
``..._(down|up)samplers_0_`` is 3*i + 2; down is IN01.. (IN00 is conv_in, never adapted), up is
OUT00.. (index 13 + 3*i + j), ``mid_block_`` is MID (index 12). The text encoder has no block.

- Block mode is on when block_dims or any of down/mid/up_lr_weight is set. Then every Linear /
  1x1 UNet adapter takes (block_dims[b], block_alphas[b]) -- unset: network_dim / network_alpha in
  every block -- and every 3x3 conv adapter (conv_block_dims[b], conv_block_alphas[b]) -- unset:
  conv_dim / conv_alpha, or no 3x3 adapters without conv_dim. A block with dim 0 gets no adapter.
- lr weights: down and up are up to 12 numbers (missing ones 1.0) or a preset over 12 blocks
  (sine: sin(pi/2 * i/11), cosine: the same reversed, linear: i/11, reverse_linear: reversed,
  zeros: 0) plus the optional '+number'; mid one number. A given list's values not above
  block_lr_zero_threshold become 0 (an unset list is 1.0 everywhere). A block with weight 0 gets
  no adapters (its dims become 0); the others train at unet_lr x weight, one optimizer group per
  block, named ``unet_block<b>`` as kohya names them.
SDXL counts its blocks differently (23); this module is the SD1/SD2 layout.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional

from .base import CONV3X3

NUM_BLOCKS = 12  # down (and up) blocks as sd-scripts counts them
MID = NUM_BLOCKS
NUM_TOTAL = 2 * NUM_BLOCKS + 1
BLOCK_NAMES = tuple([f"IN{i:02d}" for i in range(NUM_BLOCKS)] + ["MID"]
                    + [f"OUT{i:02d}" for i in range(NUM_BLOCKS)])
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def block_index(name: str) -> Optional[int]:
    """The sd-scripts block (0-24) of a kohya UNet module name; None outside the 25 blocks."""
    m = _UPDOWN.search(name)
    if m:
        side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        idx = 3 * i + (2 if kind.endswith("samplers") else j)
        return 1 + idx if side == "down" else MID + 1 + idx
    if "mid_block_" in name:
        return MID
    return None


def preset_weights(spec: str) -> list[float]:
    """down/up_lr_weight preset ('sine', 'cosine+0.5', ...) -> 12 weights, shallow to deep for down."""
    name, _, plus = spec.partition("+")
    base = float(plus) if plus else 0.0
    n = NUM_BLOCKS
    ramp = [i / (n - 1) for i in range(n)]
    curve = {"sine": [math.sin(math.pi * r / 2) for r in ramp],
             "cosine": [math.sin(math.pi * r / 2) for r in reversed(ramp)],
             "linear": ramp, "reverse_linear": list(reversed(ramp)), "zeros": [0.0] * n}[name]
    return [w + base for w in curve]


def _side(value: Any, n: int, threshold: float) -> list[float]:
    if value is None:
        return [1.0] * n
    weights = preset_weights(value) if isinstance(value, str) else [float(w) for w in value]
    weights = weights + [1.0] * (n - len(weights))
    return [w if w > threshold else 0.0 for w in weights]


def block_lr_weights(cfg: Any) -> Optional[list[float]]:
    """The 25 UNet lr weights (IN00..OUT11), or None when no block lr weight is set."""
    if cfg.down_lr_weight is None and cfg.mid_lr_weight is None and cfg.up_lr_weight is None:
        return None
    t = cfg.block_lr_zero_threshold
    return (_side(cfg.down_lr_weight, NUM_BLOCKS, t) + _side(cfg.mid_lr_weight, 1, t)
            + _side(cfg.up_lr_weight, NUM_BLOCKS, t))


def blockwise_on(cfg: Any) -> bool:
    return cfg.block_dims is not None or block_lr_weights(cfg) is not None


@dataclass(frozen=True)
class BlockRanks:
    """(dim, alpha) per block for Linear / 1x1 adapters and for 3x3 conv adapters (None: no 3x3)."""
    dims: list[int]
    alphas: list[Optional[float]]
    conv_dims: Optional[list[int]]
    conv_alphas: Optional[list[Optional[float]]]

    def rank(self, name: str, kind: str) -> Optional[tuple[int, Optional[float]]]:
        """(dim, alpha) of the UNet module `name`; None when its block has no adapter of its kind."""
        b = block_index(name)
        if b is None:  # the targets with a block setting are all inside the 25 blocks
            raise ValueError(f"{name} lies outside the UNet's 25 blocks")
        if kind == CONV3X3:
            if self.conv_dims is None or self.conv_alphas is None or not self.conv_dims[b]:
                return None
            return self.conv_dims[b], self.conv_alphas[b]
        return (self.dims[b], self.alphas[b]) if self.dims[b] else None


def block_ranks(cfg: Any) -> Optional[BlockRanks]:
    """The block ranks of `cfg` (sd-scripts get_block_dims_and_alphas + remove_block_dims_and_alphas)."""
    if not blockwise_on(cfg):
        return None
    dims = list(cfg.block_dims) if cfg.block_dims is not None else [cfg.network_dim] * NUM_TOTAL
    alphas = list(cfg.block_alphas) if cfg.block_alphas is not None else [cfg.network_alpha] * NUM_TOTAL
    conv_dims: Optional[list[int]] = None
    conv_alphas: Optional[list[Optional[float]]] = None
    if cfg.conv_block_dims is not None:
        conv_dims = list(cfg.conv_block_dims)
        conv_alphas = (list(cfg.conv_block_alphas) if cfg.conv_block_alphas is not None
                       else [cfg.conv_alpha] * NUM_TOTAL)
    elif cfg.conv_dim is not None:
        conv_dims, conv_alphas = [cfg.conv_dim] * NUM_TOTAL, [cfg.conv_alpha] * NUM_TOTAL
    weights = block_lr_weights(cfg)
    if weights is not None:  # a block that does not learn gets no adapters
        for b, w in enumerate(weights):
            if w == 0:
                dims[b] = 0
                if conv_dims is not None:
                    conv_dims[b] = 0
    return BlockRanks(dims, alphas, conv_dims, conv_alphas)


def block_network_args(cfg: Any) -> dict[str, str]:
    """The block settings as sd-scripts' --network_args strings (ss_network_args), set ones only."""
    from .base import fmt_num

    out: dict[str, str] = {}
    for key, value in (("block_dims", cfg.block_dims), ("block_alphas", cfg.block_alphas),
                       ("conv_block_dims", cfg.conv_block_dims), ("conv_block_alphas", cfg.conv_block_alphas),
                       ("down_lr_weight", cfg.down_lr_weight), ("mid_lr_weight", cfg.mid_lr_weight),
                       ("up_lr_weight", cfg.up_lr_weight)):
        if value is not None:
            out[key] = value if isinstance(value, str) else ",".join(fmt_num(v) for v in value)
    if cfg.block_lr_zero_threshold:
        out["block_lr_zero_threshold"] = fmt_num(cfg.block_lr_zero_threshold)
    return out
