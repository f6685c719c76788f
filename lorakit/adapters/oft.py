"""Diag-OFT: orthogonal fine-tuning with block-diagonal rotations (LyCORIS "diag-oft").

EXPERIMENTAL: A1111 loads it only with a non-zero constraint, ComfyUI in part, Forge and
diffusers not at all (docs/adapters.md; ``lorakit inspect`` says so for a file).

The output channels are split into blocks: (block_size, block_num) = factorization(out, dim)
(block_size <= block_num; dim is network_dim / conv_dim). Each block k has a free matrix
B_k (``oft_blocks``, shape (block_num, block_size, block_size), init 0) and the rotation

    Q = B - B^T (skew-symmetric),  R_k = (I + Q_k)(I - Q_k)^-1 (Cayley: orthogonal),

and the adapted weight rotates the rows of each block: W'[k*bs + m] = sum_n R_k[n, m] W[k*bs + n]
(W's input and kernel axes untouched). With ``constraint`` c > 0 (stored as ``alpha``), Q
over all blocks is rescaled to norm c * out when ||Q|| exceeds it. With ``rescaled`` a
trained per-output-channel factor ``rescale`` (out, 1, ...) multiplies W' (init 1).
The applied delta is W' - W, so a strength s gives W + s (W' - W). B = 0 is R = I: a fresh
adapter changes nothing.

Forward: one merged op with W + multiplier (W' - W) (merged.MergedOpModule). Dropouts while
training: network_dropout on the elements of the delta, rank_dropout on its output rows
(scaled 1/(1-p)), one mask per forward. Max-norm scales oft_blocks by the ratio, as LyCORIS
does (the delta is not linear in B, so the cap is approximate for large rotations).
Not here: BOFT (butterfly products, 4-D oft_blocks).
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from .declare import LYCORIS_GUI_ARGS, LYCORIS_MODULE, NO, FileContext, FileFormat, GuiLoraType, Loads, LOADS
from .factorization import factorization
from .merged import MergedOpModule
from .registry import register

COMFY_STRENGTH = Loads("at strength 1 only", "ComfyUI applies the strength of OFT/BOFT twice")


def constraint_of(ts: dict[str, torch.Tensor]) -> float:
    """The constraint an OFT module's file stores as alpha (none: 0)."""
    return float(f"{float(ts['alpha']):.7g}") if "alpha" in ts else 0.0


def oft_options(ts: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"constraint": constraint_of(ts), "rescaled": "rescale" in ts}


def oft_rankless(ts: dict[str, torch.Tensor]) -> str:
    return f"no rank (block rotations, constraint {constraint_of(ts):g})"


def _a1111(ctx: FileContext) -> Loads:
    if all(constraint_of(ts) != 0 for ts in ctx.modules.values()):
        return LOADS
    return Loads(NO, "A1111 applies Diag-OFT only with a non-zero constraint; this file has constraint 0")


def _comfyui(ctx: FileContext) -> Loads:
    if all(constraint_of(ts) == 0 for ts in ctx.modules.values()):
        return COMFY_STRENGTH
    return Loads("partial", "at strength 1 only: ComfyUI applies the strength twice; and it caps the rotation "
                            "at the raw constraint, not constraint x output channels")


def _diag_fits(ts: dict[str, torch.Tensor], dim: int) -> bool:
    n, b = ts["oft_blocks"].shape[0], ts["oft_blocks"].shape[-1]
    return factorization(n * b, dim) == (b, n)


DIAG_OFT = FileFormat(
    "diag-oft", lambda ts: "oft_blocks" in ts and ts["oft_blocks"].dim() != 4,
    {"A1111": _a1111, "Forge": Loads(NO), "ComfyUI": _comfyui, "diffusers": Loads(NO), "LyCORIS": LOADS},
    rank_hint=lambda ts: int(ts["oft_blocks"].shape[-1]), dim_fits=_diag_fits, options=oft_options,
    rankless=oft_rankless, experimental=True)


class OFTBase(MergedOpModule):
    """What Diag-OFT and BOFT share: LyCORIS's options, the constraint stored as alpha, the
    optional per-output-channel rescale, and their tensors (oft_blocks, [rescale], alpha)."""
    # LyCORIS's options; use_tucker is accepted (kohya_ss passes it) and, as in LyCORIS, unused
    ARGS: dict[str, Any] = {"constraint": 0.0, "rescaled": False, "use_tucker": False}

    @classmethod
    def metadata_dims(cls, cfg: Any) -> tuple[str, str]:
        """(ss_network_dim, ss_network_alpha): the block size and the constraint, which the file's
        alpha tensors hold (OFT has no LoRA alpha)."""
        return str(cfg.network_dim), str(cls.parse_args(cfg)["constraint"])

    def init_oft(self, blocks_shape: tuple[int, ...]) -> None:
        """Call from __init__ once the block layout is known."""
        w = self.org.weight
        with torch.no_grad():  # alpha is the constraint, not a LoRA alpha
            self.alpha.fill_(float(self.args["constraint"]))
        self.rescaled = bool(self.args["rescaled"])
        self.oft_blocks = nn.Parameter(torch.zeros(*blocks_shape, device=w.device, dtype=torch.float32))
        if self.rescaled:
            self.rescale = nn.Parameter(torch.ones(w.shape[0], *([1] * (w.dim() - 1)), device=w.device,
                                                   dtype=torch.float32))
        self.refresh_scale()

    def delta_from(self, new: torch.Tensor, w: torch.Tensor, train: bool) -> torch.Tensor:
        """W' - W from the rotated weight W' (times the rescale when rescaled); while training with
        rank dropout, whole output rows of it are dropped (LyCORIS's OFT rank dropout)."""
        if self.rescaled:
            new = new * self.rescale
        dw = new - w
        if train:
            keep = self.rank_keep(dw.shape[0], dw.device)
            if keep is not None:
                dw = dw * keep.view(-1, *([1] * (dw.dim() - 1)))
        return dw

    def refresh_scale(self) -> None:
        self.scale = 1.0
        self.constraint = float(self.alpha) * self.org.weight.shape[0]  # LyCORIS: constraint * out_dim

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        super().load_tensors(tensors)
        if "alpha" not in tensors:  # no constraint stored: none
            with torch.no_grad():
                self.alpha.zero_()
            self.refresh_scale()

    @torch.no_grad()
    def scale_delta(self, ratio: float) -> None:
        self.oft_blocks.mul_(ratio)

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        out = {"oft_blocks": self.oft_blocks}
        if self.rescaled:
            out["rescale"] = self.rescale
        out["alpha"] = self.alpha
        return out


@register("diag-oft")
class DiagOFTModule(OFTBase):
    """Diag-OFT (experimental: few loaders read it; see the module docstring)."""
    lycoris_algos = ("diag-oft",)
    gui_lora_types = {"LyCORIS/Diag-OFT": GuiLoraType(LYCORIS_MODULE,
                                                         (*LYCORIS_GUI_ARGS, "constrain", "rescaled"))}
    file_formats = (DIAG_OFT,)

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], **kw: Any):
        super().__init__(name, org, dim, alpha, **kw)
        self.block_size, self.block_num = factorization(org.weight.shape[0], self.dim)
        self.init_oft((self.block_num, self.block_size, self.block_size))

    def rotation(self) -> torch.Tensor:
        """R, (block_num, block_size, block_size), orthogonal."""
        b = self.oft_blocks
        q = b - b.transpose(1, 2)
        if self.constraint > 0:
            q_norm = q.norm() + 1e-8
            if q_norm > self.constraint:
                q = q * (self.constraint / q_norm)
        eye = torch.eye(self.block_size, device=b.device, dtype=b.dtype)
        return (eye + q) @ torch.linalg.inv(eye - q)

    def delta_weight(self, train: bool = False) -> torch.Tensor:  # type: ignore[override]
        r = self.rotation()
        w = self.org.weight.detach().to(device=r.device, dtype=torch.float32)
        blocks = w.reshape(self.block_num, self.block_size, *w.shape[1:])
        new = torch.einsum("knm,kn...->km...", r, blocks).reshape(w.shape)
        return self.delta_from(new, w, train)

    def extra_repr(self) -> str:
        return (f"{self.name}, blocks={self.block_num}x{self.block_size}, constraint={float(self.alpha):g}"
                f"{', rescaled' if self.rescaled else ''}, kind={self.kind}")
