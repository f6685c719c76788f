"""Module presets (`network_preset`): which layers an adapter wraps, in today's diffusers and
transformers class names.

- kohya (default): kohya's targets -- every Linear / 1x1 conv in Transformer2DModel (+ the
  ResNet / Down- / Upsample convs with conv_dim) and the CLIP attention and MLP linears.
- attn-mlp: the attention (attn1, attn2) and feed-forward linears of the transformer blocks
  (no proj_in / proj_out, no convs); CLIP attention and MLP.
- attn-only: the attention linears alone, in the UNet and in CLIP.
- full: kohya's targets with the conv blocks, plus conv_in, conv_out and the time embedding
  (LyCORIS's "full"; 3x3 convs take conv_dim, else network_dim, as LyCORIS).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from torch import nn

from .base import CONV3X3, UNET_ATTENTION_PARENTS, UNET_CONV_PARENTS, TargetRules, lycoris_conv_rank

FULL_EXTRA = ("conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2")


def _attention(path: str, module: nn.Module) -> bool:
    return ".attn1." in f".{path}" or ".attn2." in f".{path}"


def _attention_or_ff(path: str, module: nn.Module) -> bool:
    return _attention(path, module) or ".ff." in f".{path}"


def _clip_attention_only(names: set[str]) -> bool:
    return any(n.startswith("CLIP") and "Attention" in n for n in names)


def apply_preset(preset: str, rules: TargetRules, by_kind: dict[str, tuple[int, Optional[float]]],
                 cfg: Any) -> tuple[TargetRules, TargetRules, dict[str, tuple[int, Optional[float]]]]:
    """(UNet rules, text-encoder rules, rank per layer kind) for `preset`."""
    if preset == "kohya":
        return rules, rules, by_kind
    if preset == "full":
        kinds = dict(by_kind)
        kinds.setdefault(CONV3X3, lycoris_conv_rank(cfg))  # conv_dim is unset here
        unet = replace(rules, unet_parents=UNET_ATTENTION_PARENTS + UNET_CONV_PARENTS, conv3x3=True,
                       extra_paths=FULL_EXTRA)
        return unet, rules, kinds
    unet_filter = _attention if preset == "attn-only" else _attention_or_ff
    unet = replace(rules, unet_parents=UNET_ATTENTION_PARENTS, conv3x3=False, child_filter=unet_filter)
    te = replace(rules, te_match=_clip_attention_only) if preset == "attn-only" else rules
    return unet, te, by_kind
