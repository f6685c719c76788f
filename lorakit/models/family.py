"""The model-family seam: SD1/SD2 (:class:`lorakit.models.loader.SDModel`) and SDXL each implement
:class:`ModelFamily`, and training, validation and sampling reach a model only through it, so a
family is added in ``models/`` and not as ``if sdxl`` branches through the loop.

What differs between families and so lives behind this interface: how captions become the UNet's
text conditioning (one CLIP encoder, or two concatenated plus a pooled vector), the extra
per-sample conditioning (SDXL's size/crop time ids), and the UNet call that consumes both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch


@dataclass(frozen=True)
class PromptEmbeds:
    """Text conditioning of a batch of captions.

    ``context``: (B, L, D) states the UNet cross-attends to. ``pooled``: (B, P) pooled text vector
    (SDXL's ``text_embeds``), None for families without one. Rows are per caption, so a batch can
    be rebuilt from cached rows (train/text_cache.py) with :meth:`row` and :meth:`stack`.
    """
    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.context.shape[0]

    def to(self, dtype: torch.dtype) -> "PromptEmbeds":
        return PromptEmbeds(self.context.to(dtype), None if self.pooled is None else self.pooled.to(dtype))

    def detach(self) -> "PromptEmbeds":
        return PromptEmbeds(self.context.detach(), None if self.pooled is None else self.pooled.detach())

    def row(self, i: int) -> "PromptEmbeds":
        """Caption i alone, in its own storage (not a view that would keep the batch alive)."""
        return PromptEmbeds(self.context[i].clone(), None if self.pooled is None else self.pooled[i].clone())

    @staticmethod
    def stack(rows: Sequence["PromptEmbeds"]) -> "PromptEmbeds":
        pooled = None if rows[0].pooled is None else torch.stack([r.pooled for r in rows])
        return PromptEmbeds(torch.stack([r.context for r in rows]), pooled)

    def nbytes(self) -> int:
        n = self.context.numel() * self.context.element_size()
        return n if self.pooled is None else n + self.pooled.numel() * self.pooled.element_size()


class ModelFamily:
    """What every loaded model offers the training step, validation and sampling.

    Attributes each family sets: ``unet``, ``vae``, ``noise_scheduler``, ``v_parameterization``,
    ``source`` ("diffusers" / "single_file"), ``name`` (file or folder name, for metadata) and
    ``family`` ("sd1", "sd2", "sdxl").
    """
    family: str
    unet: Any
    vae: Any
    noise_scheduler: Any
    v_parameterization: bool

    @property
    def text_encoders(self) -> tuple[torch.nn.Module, ...]:
        """The text encoders adapters may be attached to, in file-prefix order (te1, te2)."""
        raise NotImplementedError

    @property
    def latent_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    def encode_prompts(self, captions: list[str], *, max_token_length: int | None, clip_skip: int,
                       weighted: bool, device: torch.device) -> PromptEmbeds:
        """Caption strings -> text conditioning, with kohya's tokenization, chunking and clip skip."""
        raise NotImplementedError

    def unet_module_name(self, path: str) -> str:
        """The UNet module ``path`` (diffusers) as adapter files name it (before '.' -> '_')."""
        return path

    def added_conditioning(self, batch: Any, device: torch.device) -> dict[str, torch.Tensor] | None:
        """Extra per-sample UNet inputs besides the text (SDXL's time ids); None where there are none."""
        return None

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, embeds: PromptEmbeds,
                added: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The UNet's prediction (noise or v) for ``noisy`` latents."""
        raise NotImplementedError
