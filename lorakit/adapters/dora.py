"""DoRA, weight-decomposed adaptation (LyCORIS ``dora_wd=True`` for LoCon, LoHa and LoKr).

The adapted weight keeps the direction of W + dW with a trained magnitude m:

    W' = m * (W + dW) / ||W + dW||

dW is the algorithm's own delta (scale included). The norm runs per input column
(``wd_on_output=False``, our default): over the output and kernel axes for each
input channel, m of shape (1, in) for a Linear and (1, in, 1, 1) for a conv. This
is the form A1111 applies (and ComfyUI, which tells the two forms apart by the
shape of ``dora_scale``). ``wd_on_output=True`` (LyCORIS 4.1.3's default) norms per
output row instead, m of shape (out, 1) / (out, 1, 1, 1); A1111 broadcasts such a
file wrongly, so it is opt-in here.

m is saved as ``<name>.dora_scale`` (float32, trainable) and initialised to ||W||
along the same axes, so a fresh adapter (dW = 0) changes nothing. As LyCORIS, the
norm adds float32 eps.

Strength (multiplier) as the loaders apply it: W + multiplier * (W' - W), so the
module's applied delta is W' - W (:func:`decomposed_delta`). The low-rank delta
itself (``delta_weight()``) stays what max-norm measures and scales, as LyCORIS's
apply_max_norm does.

LoCon (lora.py) and the merged-op algorithms LoHa and LoKr (merged.py) take the variant.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

# network_args keys for the algorithms that support DoRA (LyCORIS names)
DORA_ARGS: dict[str, Any] = {"dora_wd": False, "wd_on_output": False}


def column_norm(w: torch.Tensor, on_output: bool) -> torch.Tensor:
    """||w|| per output row (shape (out, 1, ...)) or per input column (shape (1, in, ...))."""
    rest = [1] * (w.dim() - 1)
    if on_output:
        return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *rest)
    norm = w.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    return norm.reshape(1, w.shape[1], *rest[1:])


class DoRA:
    """The DoRA variant of an algorithm, as a mixin listed before the algorithm's base class
    (``class LoConModule(DoRA, LoRAModule)``). With network_args ``dora_wd`` the module gets a
    trained magnitude ``dora_scale``, its applied delta becomes W' - W (:meth:`applied_delta`),
    merging bakes that in, files carry ``dora_scale`` and loading checks its shape. Without it the
    algorithm is unchanged. The algorithm calls :meth:`init_dora` at the end of ``__init__``.
    """
    wd: bool = False

    def init_dora(self) -> None:
        """Give the module a ``dora_scale`` parameter (= ||W||) when its args have dora_wd."""
        self.wd = bool(self.args.get("dora_wd", False))
        self.wd_on_output = bool(self.args.get("wd_on_output", False))
        if not self.wd:
            return
        w = self.org.weight
        if w.device.type == "meta":
            shape = ((w.shape[0], *[1] * (w.dim() - 1)) if self.wd_on_output
                     else (1, w.shape[1], *[1] * (w.dim() - 2)))
            m = torch.empty(shape, device=w.device, dtype=torch.float32)
        else:
            with torch.no_grad():
                m = column_norm(w.detach().float(), self.wd_on_output)
        self.dora_scale = nn.Parameter(m)

    def applied_delta(self, dw: torch.Tensor) -> torch.Tensor:
        """The delta the module applies for the algorithm's delta `dw`: W' - W with DoRA, else dw."""
        return self.decomposed(dw) if self.wd else dw

    def decomposed(self, dw: torch.Tensor) -> torch.Tensor:
        """W' - W with W' = m * (W + dw) / ||W + dw|| (float32; W is the wrapped module's weight)."""
        m = self.dora_scale
        w = self.org.weight.detach().to(device=m.device, dtype=torch.float32)
        merged = w + dw.to(device=m.device, dtype=torch.float32)
        norm = column_norm(merged, self.wd_on_output) + torch.finfo(torch.float32).eps
        return merged * (m / norm) - w

    def merge_delta(self) -> torch.Tensor:
        return self.applied_delta(super().merge_delta())  # type: ignore[misc]

    def dora_tensors(self) -> dict[str, torch.Tensor]:
        return {"dora_scale": self.dora_scale} if self.wd else {}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """A file's dora_scale must have this module's exact shape (row and column forms of a square
        weight have the same size but mean different things)."""
        if self.wd and "dora_scale" in tensors:
            got, want = tuple(tensors["dora_scale"].shape), tuple(self.dora_scale.shape)
            if got != want:
                flip = "wd_on_output=True" if not self.wd_on_output else "wd_on_output=False"
                raise ConfigError(f"{self.name}.dora_scale: shape {got} in the file, {want} here",
                                  key="network_args", fix=f"load the file with network_args {flip}")
        super().load_tensors(tensors)  # type: ignore[misc]
