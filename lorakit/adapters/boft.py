"""BOFT: butterfly orthogonal fine-tuning (LyCORIS "boft").

EXPERIMENTAL: of the common loaders only ComfyUI reads it; A1111, Forge and diffusers do not
(docs/adapters.md "Who loads what").

The out output channels are factored as out = b * N with b even and N = 2^p a power of two,
b the largest even number <= dim (network_dim / conv_dim) that allows it (LyCORIS's
power2factorization). A layer whose out cannot be factored so is a ConfigError (LyCORIS
raises too). There are M = p + 1 butterfly stages, each with N blocks of b x b:
``oft_blocks`` has shape (M, N, b, b), init 0. Every block gets the Cayley rotation

    Q = B - B^T (skew-symmetric),  R = (I + Q)(I - Q)^-1  (orthogonal).

With ``constraint`` c > 0 (stored as ``alpha``), Q over all stages and blocks is rescaled to
norm c * out when ||Q|| exceeds it.

Stage i (i = 0 .. M-1) pairs rows k = 2^i * b/2 apart: the rows are permuted so that each
group of 2k consecutive rows (two halves of k) is interleaved, cut into N consecutive blocks of
b rows, block n is replaced by R[i, n] @ rows, and the permutation is undone. The product
of the M stages is an orthogonal out x out matrix O, and the adapted weight is
W' = O W (times ``rescale``, per output channel, (out, 1, ...), init 1, with ``rescaled``).
The applied delta is W' - W: a strength s gives W + s (W' - W) (LyCORIS instead moves each
stage toward the identity; the two agree at s = 1, the training strength). B = 0 is O = I:
a fresh adapter changes nothing.

Forward: one merged op (merged.MergedOpModule). Dropouts while training as Diag-OFT
(oft.py): network_dropout on the elements of the delta, rank_dropout on its output rows.
Max-norm scales oft_blocks by the ratio, as LyCORIS does (approximate: the delta is not
linear in B).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .declare import LYCORIS_GUI_ARGS, LYCORIS_MODULE, NO, FileFormat, GuiLoraType, Loads, LOADS
from .oft import COMFY_STRENGTH, OFTBase, oft_options, oft_rankless
from .registry import register


def power2_split(out: int, dim: int) -> Optional[tuple[int, int]]:
    """(b, N): out = b * N, b even and <= dim (the largest such), N a power of two; None if none.

    dim -1 means no limit. Matches LyCORIS's power2factorization, including its search that
    stops at the first even divisor above dim.
    """
    limit = out if dim == -1 else dim
    best: Optional[tuple[int, int]] = None
    b = 0
    while b <= limit:
        b += 2
        while out % b and b < out:
            b += 2
        if b > limit:
            break
        n = out // b
        if n & (n - 1) == 0 and out % b == 0:
            best = (b, n)
    return best


def smallest_dim(out: int) -> Optional[int]:
    """The smallest dim for which `out` output channels factor for BOFT (for the error's fix)."""
    for b in range(2, out + 1, 2):
        if out % b == 0 and (out // b) & (out // b - 1) == 0:
            return b
    return None


def _boft_fits(ts: dict[str, torch.Tensor], dim: int) -> bool:
    n, b = ts["oft_blocks"].shape[1], ts["oft_blocks"].shape[-1]
    return power2_split(n * b, dim) == (b, n)


BOFT = FileFormat(
    "boft", lambda ts: "oft_blocks" in ts and ts["oft_blocks"].dim() == 4,
    {"A1111": Loads(NO), "Forge": Loads(NO), "ComfyUI": COMFY_STRENGTH, "diffusers": Loads(NO), "LyCORIS": LOADS},
    rank_hint=lambda ts: int(ts["oft_blocks"].shape[-1]), dim_fits=_boft_fits, options=oft_options,
    rankless=oft_rankless, experimental=True)


@register("boft")
class BOFTModule(OFTBase):
    """BOFT (experimental: only ComfyUI loads it; see the module docstring)."""
    lycoris_algos = ("boft",)
    gui_lora_types = {"LyCORIS/BOFT": GuiLoraType(LYCORIS_MODULE, LYCORIS_GUI_ARGS)}
    file_formats = (BOFT,)

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        out = org.weight.shape[0]
        split = power2_split(out, self.dim)
        if split is None:
            need = smallest_dim(out)
            raise ConfigError(
                f"{name}: BOFT cannot split {out} output channels into an even block size <= {self.dim} "
                f"times a power of two", key="conv_dim" if self.kind == "conv3x3" else "network_dim",
                fix=(f"use a dim of at least {need} for this layer" if need else
                     "BOFT needs an even number of output channels; use diag-oft or another algorithm"))
        self.block_size, self.block_num = split
        self.stages = self.block_num.bit_length()  # p + 1 for N = 2^p
        self.init_oft((self.stages, self.block_num, self.block_size, self.block_size))

    def rotations(self) -> torch.Tensor:
        """R, (stages, block_num, block_size, block_size), each block orthogonal."""
        b = self.oft_blocks
        q = b - b.transpose(-1, -2)
        if self.constraint > 0:
            q_norm = q.norm() + 1e-8
            if q_norm > self.constraint:
                q = q * (self.constraint / q_norm)
        eye = torch.eye(self.block_size, device=b.device, dtype=b.dtype)
        # (I + Q)(I - Q)^-1 = (I - Q)^-1 (I + Q): the two factors commute
        return torch.linalg.solve(eye - q, eye + q)

    def stage_order(self, i: int, device: torch.device) -> torch.Tensor:
        """The row permutation of stage i: position -> source row (groups of 2k rows interleaved)."""
        k = (1 << i) * (self.block_size // 2)
        return torch.arange(self.block_num * self.block_size, device=device).view(-1, 2, k).transpose(1, 2).reshape(-1)

    def rotate(self, w: torch.Tensor) -> torch.Tensor:
        """O @ w along dim 0 (w: (out, ...)), the butterfly product of all stages."""
        r = self.rotations()
        shape = w.shape
        x = w.reshape(shape[0], -1)
        for i in range(self.stages):
            order = self.stage_order(i, x.device)
            blocks = x[order].view(self.block_num, self.block_size, -1)
            y = torch.matmul(r[i], blocks).reshape(shape[0], -1)
            x = torch.empty_like(y).index_copy_(0, order, y)  # undo the permutation
        return x.reshape(shape)

    def delta_weight(self, train: bool = False) -> torch.Tensor:  # type: ignore[override]
        w = self.org.weight.detach().to(device=self.oft_blocks.device, dtype=torch.float32)
        new = self.rotate(w)
        return self.delta_from(new, w, train)

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        t = tensors.get("oft_blocks")
        if t is not None and tuple(t.shape) != tuple(self.oft_blocks.shape):
            raise ConfigError(f"{self.name}.oft_blocks: shape {tuple(t.shape)} in the file, "
                              f"{tuple(self.oft_blocks.shape)} here", key="network_dim",
                              fix="set network_dim / conv_dim to the values the file was trained with")
        super().load_tensors(tensors)

    def extra_repr(self) -> str:
        return (f"{self.name}, stages={self.stages}, blocks={self.block_num}x{self.block_size}, "
                f"constraint={float(self.alpha):g}{', rescaled' if self.rescaled else ''}, kind={self.kind}")
