"""Optimizer construction from the config: names as kohya spells them, any module.Class path."""
from __future__ import annotations

import importlib
from typing import Any

import torch

from ..config.schema import TrainConfig
from ..errors import ConfigError


def _torch(name: str, **fixed: Any):
    return lambda: (getattr(torch.optim, name), fixed)


def _ext(module: str, cls: str, **fixed: Any):
    def load():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            raise ConfigError(f"optimizer needs the '{module}' package", key="optimizer_type",
                              fix=f"pip install {module}") from None
        return getattr(mod, cls), fixed
    return load


# lower-case kohya name -> loader returning (class, fixed kwargs)
OPTIMIZERS = {
    "adamw": _torch("AdamW"),
    "sgd": _torch("SGD"),
    "sgdnesterov": _torch("SGD", nesterov=True, momentum=0.9),
    "prodigy": _ext("prodigyopt", "Prodigy"),
    "dadaptadam": _ext("dadaptation", "DAdaptAdam"),
    "dadaptation": _ext("dadaptation.experimental", "DAdaptAdamPreprint"),  # kohya since 2023-05
    "dadaptadampreprint": _ext("dadaptation.experimental", "DAdaptAdamPreprint"),
    "dadaptlion": _ext("dadaptation", "DAdaptLion"),
    "dadaptsgd": _ext("dadaptation", "DAdaptSGD"),
    "dadaptadagrad": _ext("dadaptation", "DAdaptAdaGrad"),
    "dadaptadan": _ext("dadaptation", "DAdaptAdan"),
}


def resolve_optimizer(name: str) -> tuple[type, dict[str, Any]]:
    key = name.lower()
    if key in OPTIMIZERS:
        return OPTIMIZERS[key]()
    if "." in name:
        mod, _, cls = name.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), cls), {}
        except (ImportError, AttributeError):
            raise ConfigError(f"cannot import optimizer '{name}'", key="optimizer_type",
                              fix="check the module path and that its package is installed") from None
    raise ConfigError(f"unknown optimizer '{name}'", key="optimizer_type",
                      fix=f"use one of {', '.join(sorted(OPTIMIZERS))} or a module.Class path")


def build_optimizer(cfg: TrainConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    cls, fixed = resolve_optimizer(cfg.optimizer_type)
    kwargs = {**fixed, **cfg.optimizer_args}
    groups = [{k: v for k, v in g.items()} for g in param_groups]
    lrs = {g["lr"] for g in groups}
    if len(lrs) > 1 and getattr(cls, "__module__", "").split(".")[0] in ("prodigyopt", "dadaptation"):
        raise ConfigError(
            f"{cfg.optimizer_type} adapts one learning rate for all groups; unet_lr and text_encoder_lr "
            "differ", key="text_encoder_lr", fix="set unet_lr and text_encoder_lr to the same value")
    try:
        return cls(groups, lr=cfg.learning_rate, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{cfg.optimizer_type} rejects optimizer_args {kwargs}: {e}",
                          key="optimizer_args", fix="remove or rename the argument") from None
