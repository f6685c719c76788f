"""Find the targets in the UNet and text encoder, attach one adapter module to each.

kohya's default targets (docs/adapters.md "Default targets"): every Linear and 1x1
Conv inside Transformer2DModel blocks (192 modules in SD1.5) and the text encoder's
CLIPAttention + CLIPMLP linears (72). With conv_dim also ResnetBlock2D, Downsample2D
and Upsample2D: their 3x3 convs get conv_dim/conv_alpha, time_emb_proj and the 1x1
conv_shortcut get network_dim (278 UNet modules). conv_in, conv_out and the time
embedding are never adapted. The algorithm class may change the rules (TargetRules).

Names: ``lora_unet_<diffusers module path, '.' -> '_'>`` and always
``lora_te_text_model_<...>`` for the text encoder (transformers 5's CLIPTextModel has
no ``.text_model`` submodule; A1111 and ComfyUI only load the text_model names).

The adapters are children of the network under their kohya names, so
``network.state_dict()`` has the file's key names (alpha in float32).
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..errors import ConfigError
from .base import CONV1X1, CONV3X3, LINEAR, AdapterModule, TargetRules
from .presets import apply_preset
from .registry import get_algorithm

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"


def class_names(module: nn.Module) -> set[str]:
    return {c.__name__ for c in type(module).__mro__}


def layer_kind(module: nn.Module) -> Optional[str]:
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        return CONV1X1 if tuple(module.kernel_size) == (1, 1) else CONV3X3
    return None


def te_path(path: str) -> str:
    """Module path as in transformers 4's CLIPTextModel: always under text_model."""
    return path if path == "text_model" or path.startswith("text_model.") else "text_model." + path


def normalise_te_key(key: str) -> str:
    """lora_te_encoder_... (a transformers-5 file from another tool) -> lora_te_text_model_encoder_..."""
    if key.startswith(TE_PREFIX) and not key.startswith(TE_PREFIX + "text_model_") \
            and not key.startswith(("lora_te1_", "lora_te2_")):
        return TE_PREFIX + "text_model_" + key[len(TE_PREFIX):]
    return key


def find_targets(root: nn.Module, parent_match, rules: TargetRules) -> Iterator[tuple[str, nn.Module, str]]:
    """(path, module, kind) for each Linear / Conv2d inside a matched parent, in kohya's order."""
    seen: set[int] = set()
    for parent_path, parent in root.named_modules():
        if not parent_match(class_names(parent)):
            continue
        for child_path, child in parent.named_modules():
            kind = layer_kind(child)
            if kind is None or id(child) in seen:
                continue
            if kind == CONV3X3 and not rules.conv3x3:
                continue
            if rules.child_filter is not None and not rules.child_filter(child_path, child):
                continue
            seen.add(id(child))
            yield (f"{parent_path}.{child_path}" if parent_path else child_path), child, kind
    for path in rules.extra_paths:  # e.g. conv_in / conv_out / time_embedding (preset "full")
        child = root.get_submodule(path) if _has(root, path) else None
        kind = layer_kind(child) if child is not None else None
        if kind is not None and id(child) not in seen:
            seen.add(id(child))
            yield path, child, kind


def _has(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


class AdapterNetwork(nn.Module):
    """All adapter modules of one training run (kohya's LoRANetwork)."""

    def __init__(self, algo_cls: type[AdapterModule], unet_modules: dict[str, AdapterModule],
                 text_encoder_modules: dict[str, AdapterModule], *, train_unet: bool, train_text_encoder: bool,
                 network_args: Optional[dict[str, str]] = None, multiplier: float = 1.0,
                 network_module: Optional[str] = None):
        super().__init__()
        self.algo = algo_cls.algo
        self.network_module_name = network_module or algo_cls.network_module
        self.network_args: dict[str, str] = dict(network_args or {})
        self.train_unet = train_unet
        self.train_text_encoder = train_text_encoder
        self.multiplier = multiplier
        # plain dicts (not ModuleDict): the modules are registered once, under their kohya names
        self.text_encoder_modules: dict[str, AdapterModule] = dict(text_encoder_modules)
        self.unet_modules: dict[str, AdapterModule] = dict(unet_modules)
        for name, m in list(self.text_encoder_modules.items()) + list(self.unet_modules.items()):
            if name in self._modules:
                raise ValueError(f"duplicated adapter name: {name}")
            self.add_module(name, m)

    def all_modules(self) -> list[AdapterModule]:
        return list(self.text_encoder_modules.values()) + list(self.unet_modules.values())

    def __len__(self) -> int:
        return len(self.text_encoder_modules) + len(self.unet_modules)

    # --- apply / restore -------------------------------------------------------------
    def apply(self, fn=None):  # type: ignore[override]
        """Route every target's forward through its adapter. With `fn`: nn.Module.apply(fn)."""
        if fn is not None:
            return super().apply(fn)
        for m in self.all_modules():
            m.apply()
        return self

    apply_to = apply

    def restore(self) -> None:
        """Undo apply(): the models run exactly as before."""
        for m in reversed(self.all_modules()):
            m.restore()

    def set_multiplier(self, multiplier: float) -> None:
        self.multiplier = float(multiplier)
        for m in self.all_modules():
            m.multiplier = self.multiplier

    @torch.no_grad()
    def merge(self, multiplier: Optional[float] = None) -> None:
        """Bake multiplier * delta W into the base weights (call restore() first)."""
        for m in self.all_modules():
            m.merge(multiplier)

    # --- optimizer ---------------------------------------------------------------------
    def param_groups(self, text_encoder_lr: float, unet_lr: float) -> list[dict[str, Any]]:
        """kohya 2.16: TE group first, then UNet; a group with lr 0 is dropped and frozen."""
        groups = []
        for name, modules, lr in (("textencoder", self.text_encoder_modules, text_encoder_lr),
                                  ("unet", self.unet_modules, unet_lr)):
            params = [p for m in modules.values() for p in m.parameters()]
            if not params:
                continue
            trainable = lr is not None and lr > 0
            for p in params:
                p.requires_grad_(trainable)
            if trainable:
                groups.append({"params": params, "lr": float(lr), "name": name})
        return groups

    # --- saving / loading -------------------------------------------------------------
    def state_dict_to_save(self, dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
        """kohya key names -> CPU tensors in `dtype` (alpha stays float32: exact for any alpha)."""
        out: dict[str, torch.Tensor] = {}
        for m in self.all_modules():
            for key, t in m.tensors_to_save().items():
                t = t.detach().to("cpu")
                if dtype is not None and t.is_floating_point() and key != "alpha":
                    t = t.to(dtype)
                out[f"{m.name}.{key}"] = t.contiguous()
        return out

    def load_weights(self, source: str | os.PathLike | dict[str, torch.Tensor]) -> dict[str, list[str]]:
        """Load a kohya-format file or state dict into the existing modules.

        Returns {'missing': module names the file lacks, 'unexpected': file keys no module takes}.
        A shape that does not fit (other rank) is a ConfigError.
        """
        if isinstance(source, (str, os.PathLike)):
            from .file import read_adapter_file
            tensors, _ = read_adapter_file(source)
        else:
            tensors = dict(source)
        by_module: dict[str, dict[str, torch.Tensor]] = {}
        unexpected = []
        for key, t in tensors.items():
            name, _, sub = normalise_te_key(key).partition(".")
            if name in self._modules and sub:
                by_module.setdefault(name, {})[sub] = t
            else:
                unexpected.append(key)
        missing = []
        for m in self.all_modules():
            if m.name in by_module:
                m.load_tensors(by_module[m.name])
            else:
                missing.append(m.name)
        return {"missing": missing, "unexpected": sorted(unexpected)}

    # --- max-norm ----------------------------------------------------------------------
    @torch.no_grad()
    def apply_max_norm(self, max_norm: float, device: Optional[torch.device | str] = None
                       ) -> tuple[int, float, float]:
        """kohya's max-norm regularization (scale_weight_norms): cap ||delta W||_F (scale included, multiplier not) at max_norm.

        n = max(||dW||, max_norm/2); ratio = min(n, max_norm)/n; modules with ratio != 1
        are scaled (LoRA: up and down by sqrt(ratio)). Returns (keys_scaled, average
        norm, max norm), the norms measured after scaling.
        """
        norms: list[float] = []
        scaled = 0
        for m in self.all_modules():
            dw = m.delta_weight()
            if device is not None:
                dw = dw.to(device)
            norm = dw.float().norm().item()
            n = max(norm, max_norm / 2)
            ratio = min(n, max_norm) / n
            if ratio != 1:
                m.scale_delta(ratio)
                scaled += 1
            norms.append(norm * ratio)
        if not norms:
            return 0, 0.0, 0.0
        return scaled, sum(norms) / len(norms), max(norms)


def build_modules(algo_cls: type[AdapterModule], root: nn.Module, prefix: str, parent_match,
                  rules: TargetRules, by_kind: dict[str, tuple[int, Optional[float]]], path_fn,
                  module_kwargs: dict[str, Any]) -> dict[str, AdapterModule]:
    out: dict[str, AdapterModule] = {}
    for path, child, kind in find_targets(root, parent_match, rules):
        if kind not in by_kind:
            continue
        dim, alpha = by_kind[kind]
        name = prefix + path_fn(path).replace(".", "_")
        if name in out:
            raise ValueError(f"duplicated adapter name: {name}")
        out[name] = algo_cls(name, child, dim, alpha, **module_kwargs)
    return out


def create_network(cfg: Any, unet: Optional[nn.Module], text_encoder: Optional[nn.Module], *,
                   multiplier: float = 1.0) -> AdapterNetwork:
    """The adapter network for `cfg` (a TrainConfig): modules built, not yet applied.

    A part is trained (and gets modules) unless network_train_*_only excludes it or its
    resolved lr is 0: kohya would still add zero-initialised modules there, which change
    nothing but the file size.
    """
    algo_cls = get_algorithm(cfg.network_type)
    args = algo_cls.parse_args(cfg)  # unknown network_args keys fail here, before any module is built
    rules = algo_cls.target_rules(cfg)
    ranks = algo_cls.rank_settings(cfg)
    unet_rules, te_rules, by_kind = apply_preset(getattr(cfg, "network_preset", "kohya"), rules, ranks.by_kind, cfg)
    kw = dict(multiplier=multiplier, dropout=cfg.network_dropout, rank_dropout=cfg.rank_dropout,
              module_dropout=cfg.module_dropout, args=args, **ranks.extra)
    train_unet = unet is not None and not cfg.network_train_text_encoder_only and cfg.resolved_unet_lr() > 0
    train_te = (text_encoder is not None and not cfg.network_train_unet_only
                and cfg.resolved_text_encoder_lr() > 0)
    if not (train_unet or train_te):
        raise ConfigError("nothing to train: the UNet and the text encoder both have learning rate 0",
                        key="unet_lr", fix="set unet_lr or text_encoder_lr above 0")
    te_modules = build_modules(algo_cls, text_encoder, TE_PREFIX, te_rules.te_match, te_rules, by_kind,
                               te_path, kw) if train_te else {}
    parents = set(unet_rules.unet_parents)
    unet_modules = build_modules(algo_cls, unet, UNET_PREFIX, lambda names: bool(names & parents), unet_rules,
                                 by_kind, lambda p: p, kw) if train_unet else {}
    return AdapterNetwork(algo_cls, unet_modules, te_modules, train_unet=train_unet,
                          train_text_encoder=train_te, network_args=algo_cls.network_args(cfg),
                          multiplier=multiplier, network_module=algo_cls.module_for(cfg))
