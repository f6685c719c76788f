"""Block-wise ranks and learning rates of the UNet (sd-scripts networks/lora.py semantics).

A block table per model family (:data:`SD_BLOCKS`, :data:`SDXL_BLOCKS`; :func:`blocks_for`) says
which block a kohya UNet module name lies in and how many values each key takes.

- SD1.x/2.x, 25 blocks: IN00-IN11, MID, OUT00-OUT11. ``(down|up)_blocks_<i>_(attentions|resnets)_<j>_``
  is block 3*i + j of its side, ``..._(down|up)samplers_0_`` is 3*i + 2; down is IN01.. (IN00 is
  conv_in, never adapted), up is OUT00.. (index 13 + 3*i + j), ``mid_block_`` is MID (index 12).
- SDXL, 23 blocks: BASE (index 0: time_embed_, label_emb_), IN00-IN08 (``input_blocks_<k>_``,
  index 1 + k; IN00 is conv_in), MID00-MID02 (``middle_block_<k>_``, 10 + k), OUT00-OUT08
  (``output_blocks_<k>_``, 13 + k), OUT (index 22: ``out_``, conv_out). BASE, IN00 and OUT hold no
  adapter with kohya's targets. The names are the original (SGM) layout's, as sd-scripts' own UNet.
- The text encoder has no block.

Block mode is on when block_dims or any of down/mid/up_lr_weight is set. Then every Linear / 1x1
UNet adapter takes (block_dims[b], block_alphas[b]) -- unset: network_dim / network_alpha in every
block -- and every 3x3 conv adapter (conv_block_dims[b], conv_block_alphas[b]) -- unset: conv_dim /
conv_alpha, or no 3x3 adapters without conv_dim. A block with dim 0 gets no adapter.

lr weights: down and up are up to `side` numbers (12 / 9; missing ones 1.0) or a preset over the
`side` blocks (sine: sin(pi/2 * i/(side-1)), cosine: the same reversed, linear: i/(side-1),
reverse_linear: reversed, zeros: 0) plus the optional '+number'; mid up to `mid` numbers (1 / 3).
A given list's values not above block_lr_zero_threshold become 0 (an unset list is 1.0 everywhere;
SDXL's BASE and OUT are always 1.0). A block with weight 0 gets no adapters (its dims become 0);
the others train at unet_lr x weight, one optimizer group per block, named ``unet_block<b>``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .kinds import CONV3X3, fmt_num

_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")
_SGM = re.compile(r"lora_unet_(input_blocks|middle_block|output_blocks)_(\d+)_")
_SGM_FIRST = {"input_blocks": 1, "middle_block": 10, "output_blocks": 13}


def sd_block_index(name: str) -> Optional[int]:
    """The SD1/SD2 block (0-24) of a kohya UNet module name; None outside the 25 blocks."""
    m = _UPDOWN.search(name)
    if m:
        side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
        idx = 3 * i + (2 if kind.endswith("samplers") else j)
        return 1 + idx if side == "down" else 13 + idx
    if "mid_block_" in name:
        return 12
    return None


def sdxl_block_index(name: str) -> Optional[int]:
    """The SDXL block (0-22) of a kohya UNet module name (original layout); None outside the UNet."""
    m = _SGM.match(name)
    if m:
        return _SGM_FIRST[m.group(1)] + int(m.group(2))
    if name.startswith(("lora_unet_time_embed_", "lora_unet_label_emb_")):
        return 0
    if name.startswith("lora_unet_out_"):
        return 22
    return None


@dataclass(frozen=True)
class BlockTable:
    """One model family's blocks as sd-scripts counts them."""
    family: str                 # for messages: "SD1.x/2.x", "SDXL"
    names: tuple[str, ...]      # one per block value, in value order
    side: int                   # down (and up) blocks a down/up_lr_weight covers
    mid: int                    # values mid_lr_weight takes
    first_down: int             # index of the first down block (blocks before it have weight 1.0)
    index: Callable[[str], Optional[int]]
    layout: str                 # the blocks in value order, in words

    @property
    def total(self) -> int:
        return len(self.names)


SD_BLOCKS = BlockTable("SD1.x/2.x", tuple([f"IN{i:02d}" for i in range(12)] + ["MID"]
                                          + [f"OUT{i:02d}" for i in range(12)]),
                       side=12, mid=1, first_down=0, index=sd_block_index,
                       layout="IN00-IN11, MID, OUT00-OUT11")
SDXL_BLOCKS = BlockTable("SDXL", tuple(["BASE"] + [f"IN{i:02d}" for i in range(9)] + [f"MID{i:02d}" for i in range(3)]
                                       + [f"OUT{i:02d}" for i in range(9)] + ["OUT"]),
                         side=9, mid=3, first_down=1, index=sdxl_block_index,
                         layout="BASE, IN00-IN08, MID00-MID02, OUT00-OUT08, OUT")


def blocks_for(family: str) -> BlockTable:
    """The block table of a model family ("sd1", "sd2", "sdxl")."""
    return SDXL_BLOCKS if family == "sdxl" else SD_BLOCKS


def declared_blocks(cfg: Any) -> Optional[BlockTable]:
    """The table the config's own sdxl / v2 settings name (they are checked against the weights);
    None when the family is known only once the model loads."""
    if cfg.sdxl:
        return SDXL_BLOCKS
    if cfg.sdxl is False or cfg.v2:
        return SD_BLOCKS
    return None


def preset_weights(spec: str, n: int = 12) -> list[float]:
    """down/up_lr_weight preset ('sine', 'cosine+0.5', ...) -> n weights, shallow to deep for down."""
    name, _, plus = spec.partition("+")
    base = float(plus) if plus else 0.0
    ramp = [i / (n - 1) for i in range(n)]
    curve = {"sine": [math.sin(math.pi * r / 2) for r in ramp],
             "cosine": [math.sin(math.pi * r / 2) for r in reversed(ramp)],
             "linear": ramp, "reverse_linear": list(reversed(ramp)), "zeros": [0.0] * n}[name]
    return [w + base for w in curve]


def _side(value: Any, n: int, threshold: float) -> list[float]:
    if value is None:
        return [1.0] * n
    weights = preset_weights(value, n) if isinstance(value, str) else [float(w) for w in value]
    weights = weights + [1.0] * (n - len(weights))
    return [w if w > threshold else 0.0 for w in weights]


def block_lr_weights(cfg: Any, table: BlockTable = SD_BLOCKS) -> Optional[list[float]]:
    """One UNet lr weight per block of `table`, or None when no block lr weight is set."""
    if cfg.down_lr_weight is None and cfg.mid_lr_weight is None and cfg.up_lr_weight is None:
        return None
    t = cfg.block_lr_zero_threshold
    weights = (_side(cfg.down_lr_weight, table.side, t) + _side(cfg.mid_lr_weight, table.mid, t)
               + _side(cfg.up_lr_weight, table.side, t))
    after = table.total - table.first_down - len(weights)
    return [1.0] * table.first_down + weights + [1.0] * after


def blockwise_on(cfg: Any) -> bool:
    return (cfg.block_dims is not None or cfg.down_lr_weight is not None or cfg.mid_lr_weight is not None
            or cfg.up_lr_weight is not None)


def block_lists(cfg: Any) -> tuple[tuple[str, Any], ...]:
    return (("block_dims", cfg.block_dims), ("block_alphas", cfg.block_alphas),
            ("conv_block_dims", cfg.conv_block_dims), ("conv_block_alphas", cfg.conv_block_alphas))


def count_problems(cfg: Any, table: BlockTable) -> list[tuple[str, str, str]]:
    """(key, what, fix) for each block key whose number of values is not `table`'s."""
    out = []
    other = SDXL_BLOCKS if table is SD_BLOCKS else SD_BLOCKS
    for key, value in block_lists(cfg):
        if value is not None and len(value) != table.total:
            hint = f" (a list for {other.family})" if len(value) == other.total else ""
            out.append((key, f"{key} has {len(value)} values{hint}; the {table.family} UNet has {table.total} "
                             f"blocks: {table.layout}",
                        f"give {key} {table.total} values for this {table.family} model, one per block"))
    for key, value, n in (("down_lr_weight", cfg.down_lr_weight, table.side),
                          ("mid_lr_weight", cfg.mid_lr_weight, table.mid),
                          ("up_lr_weight", cfg.up_lr_weight, table.side)):
        if isinstance(value, list) and len(value) > n:
            out.append((key, f"{key} has {len(value)} values; the {table.family} UNet takes at most {n} there",
                        f"give {key} at most {n} values for this {table.family} model (missing ones are 1)"))
    return out


@dataclass(frozen=True)
class BlockRanks:
    """(dim, alpha) per block for Linear / 1x1 adapters and for 3x3 conv adapters (None: no 3x3)."""
    table: BlockTable
    dims: list[int]
    alphas: list[Optional[float]]
    conv_dims: Optional[list[int]]
    conv_alphas: Optional[list[Optional[float]]]

    def rank(self, name: str, kind: str) -> Optional[tuple[int, Optional[float]]]:
        """(dim, alpha) of the UNet module `name`; None when its block has no adapter of its kind."""
        b = self.table.index(name)
        if b is None:  # the targets with a block setting all lie inside the blocks
            raise ValueError(f"{name} lies outside the {self.table.family} UNet's {self.table.total} blocks")
        if kind == CONV3X3:
            if self.conv_dims is None or self.conv_alphas is None or not self.conv_dims[b]:
                return None
            return self.conv_dims[b], self.conv_alphas[b]
        return (self.dims[b], self.alphas[b]) if self.dims[b] else None


def block_ranks(cfg: Any, table: BlockTable = SD_BLOCKS) -> Optional[BlockRanks]:
    """The block ranks of `cfg` (sd-scripts get_block_dims_and_alphas + remove_block_dims_and_alphas);
    the lists' lengths are `table`'s (count_problems)."""
    if not blockwise_on(cfg):
        return None
    n = table.total
    dims = list(cfg.block_dims) if cfg.block_dims is not None else [cfg.network_dim] * n
    alphas = list(cfg.block_alphas) if cfg.block_alphas is not None else [cfg.network_alpha] * n
    conv_dims: Optional[list[int]] = None
    conv_alphas: Optional[list[Optional[float]]] = None
    if cfg.conv_block_dims is not None:
        conv_dims = list(cfg.conv_block_dims)
        conv_alphas = list(cfg.conv_block_alphas) if cfg.conv_block_alphas is not None else [cfg.conv_alpha] * n
    elif cfg.conv_dim is not None:
        conv_dims, conv_alphas = [cfg.conv_dim] * n, [cfg.conv_alpha] * n
    weights = block_lr_weights(cfg, table)
    if weights is not None:  # a block that does not learn gets no adapters
        for b, w in enumerate(weights):
            if w == 0:
                dims[b] = 0
                if conv_dims is not None:
                    conv_dims[b] = 0
    return BlockRanks(table, dims, alphas, conv_dims, conv_alphas)


def block_network_args(cfg: Any) -> dict[str, str]:
    """The block settings as sd-scripts' --network_args strings (ss_network_args), set ones only."""
    out: dict[str, str] = {}
    for key, value in (*block_lists(cfg), ("down_lr_weight", cfg.down_lr_weight),
                       ("mid_lr_weight", cfg.mid_lr_weight), ("up_lr_weight", cfg.up_lr_weight)):
        if value is not None:
            out[key] = value if isinstance(value, str) else ",".join(fmt_num(v) for v in value)
    if cfg.block_lr_zero_threshold:
        out["block_lr_zero_threshold"] = fmt_num(cfg.block_lr_zero_threshold)
    return out
