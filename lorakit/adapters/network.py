"""Find kohya's default targets in the UNet and text encoder and attach adapter modules.

Targets (adapter-format.md): every Linear and 1x1 Conv inside Transformer2DModel blocks
(192 modules in SD1.5) and the text encoder's attention and MLP linears (72). With
conv_dim also ResnetBlock2D / Downsample2D / Upsample2D: 3x3 convs get conv_dim and
conv_alpha, the time_emb_proj Linear and 1x1 conv_shortcut get network_dim (278 in all).
conv_in, conv_out and the time embedding are never adapted.
"""
from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from ..config.schema import TrainConfig
from .registry import get_algorithm

UNET_ATTENTION = ("Transformer2DModel",)
UNET_CONV = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def _is_te_target(cls_name: str) -> bool:
    # CLIPAttention (transformers 5), CLIPSdpaAttention / CLIPFlashAttention2 (4.x), CLIPMLP
    return cls_name == "CLIPMLP" or (cls_name.startswith("CLIP") and cls_name.endswith("Attention"))


def te_path(path: str) -> str:
    """transformers 5's CLIPTextModel has no .text_model; loaders expect lora_te_text_model_*."""
    return path if path.startswith("text_model.") else "text_model." + path


def find_targets(root: nn.Module, is_parent, conv: bool) -> Iterator[tuple[str, nn.Module, bool]]:
    """(path, module, is_3x3_conv) for Linear / Conv2d children of the matched parents."""
    seen = set()
    for parent_path, parent in root.named_modules():
        if not is_parent(type(parent).__name__):
            continue
        for child_path, child in parent.named_modules():
            path = f"{parent_path}.{child_path}" if child_path else parent_path
            if path in seen or not isinstance(child, (nn.Linear, nn.Conv2d)):
                continue
            is_3x3 = isinstance(child, nn.Conv2d) and child.kernel_size != (1, 1)
            if is_3x3 and not conv:
                continue
            seen.add(path)
            yield path, child, is_3x3


class AdapterNetwork(nn.Module):
    network_module_name = "networks.lora"

    def __init__(self, cfg: TrainConfig, unet: nn.Module, text_encoder: nn.Module | None):
        super().__init__()
        cls = get_algorithm(cfg.network_type)
        self.algo = cls.algo
        kw = dict(dropout=cfg.network_dropout, rank_dropout=cfg.rank_dropout, module_dropout=cfg.module_dropout)
        self.train_unet = cfg.resolved_unet_lr() > 0
        self.train_text_encoder = text_encoder is not None and cfg.resolved_text_encoder_lr() > 0
        self.text_encoder_modules = nn.ModuleDict()
        self.unet_modules = nn.ModuleDict()
        if self.train_text_encoder:
            for path, mod, _ in find_targets(text_encoder, _is_te_target, conv=False):
                name = "lora_te_" + te_path(path).replace(".", "_")
                self.text_encoder_modules[name] = cls(name, mod, cfg.network_dim, cfg.network_alpha, **kw)
        if self.train_unet:
            conv = cfg.conv_dim is not None
            parents = UNET_ATTENTION + (UNET_CONV if conv else ())
            for path, mod, is_3x3 in find_targets(unet, lambda n: n in parents, conv):
                name = "lora_unet_" + path.replace(".", "_")
                dim, alpha = (cfg.conv_dim, cfg.conv_alpha) if is_3x3 else (cfg.network_dim, cfg.network_alpha)
                self.unet_modules[name] = cls(name, mod, dim, alpha, **kw)
        self.network_args: dict[str, str] = {}
        if cfg.conv_dim is not None:
            self.network_args = {"conv_dim": str(cfg.conv_dim), "conv_alpha": str(cfg.conv_alpha or cfg.conv_dim)}

    def all_modules(self) -> list[nn.Module]:
        return list(self.text_encoder_modules.values()) + list(self.unet_modules.values())

    def apply(self) -> None:  # type: ignore[override]
        for m in self.all_modules():
            m.apply_to()

    def restore(self) -> None:
        for m in self.all_modules():
            m.restore()

    def set_multiplier(self, multiplier: float) -> None:
        for m in self.all_modules():
            m.multiplier = multiplier

    def param_groups(self, text_encoder_lr: float, unet_lr: float) -> list[dict[str, Any]]:
        """TE group first, then UNet (kohya 2.16); a group with lr 0 is dropped and frozen."""
        groups = []
        for name, modules, lr in (("textencoder", self.text_encoder_modules, text_encoder_lr),
                                  ("unet", self.unet_modules, unet_lr)):
            params = [p for m in modules.values() for p in m.parameters()]
            if not params:
                continue
            if lr > 0:
                groups.append({"params": params, "lr": lr, "name": name})
            else:
                for p in params:
                    p.requires_grad_(False)
        return groups

    def state_dict_to_save(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.all_modules():
            for key, t in m.tensors_to_save().items():
                t = t.detach().to("cpu")
                out[f"{m.name}.{key}"] = t if key == "alpha" or t.dtype == torch.bool else t.to(dtype)
        return {k: v.contiguous() for k, v in out.items()}

    def load_weights(self, tensors: dict[str, torch.Tensor] | str) -> None:
        if isinstance(tensors, str):
            from .file import read_adapter_file
            tensors, _ = read_adapter_file(tensors)
        for m in self.all_modules():
            prefix = m.name + "."
            mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if mine:
                m.load_tensors(mine)

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya-semantics 2.12: cap ||delta W * scale||_F at max_norm; returns (scaled, avg, max) norms."""
        norms, scaled = [], 0
        for m in self.all_modules():
            norm = (m.delta_weight().float() * m.scale).norm()
            n = max(norm.item(), max_norm / 2)
            ratio = min(n, max_norm) / n
            if ratio != 1:
                m.scale_delta(ratio)
                scaled += 1
            norms.append(norm.item() * ratio)
        return scaled, sum(norms) / max(1, len(norms)), max(norms, default=0.0)


def create_network(cfg: TrainConfig, unet: nn.Module, text_encoder: nn.Module | None) -> AdapterNetwork:
    return AdapterNetwork(cfg, unet, text_encoder)
