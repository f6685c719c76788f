"""Optimizer construction from the config: names as kohya spells them, any module.Class path.

Names are case-insensitive (docs/kohya-rules.md 1). A name that is not
in the table is a torch.optim class (exact case, e.g. "RAdam") or a dotted module.Class.
Prodigy and the D-Adaptation family accept different text-encoder and UNet lrs through
groupscale.GroupScaleMixin (docs/optimizers.md).

Prodigy, DAdaptAdam, DAdaptation/DAdaptAdamPreprint and DAdaptLion also have lorakit's
foreach versions (fast_prodigy, fast_dadapt: the reference math with no host sync per
parameter, subclasses of the reference classes), chosen with optimizer_args
implementation="fast". The reference packages stay the default: on CPU the foreach
versions measured 0.71-0.95x the reference speed (bench/RESULTS.md) and their GPU gain
is not measured yet. resolve_optimizer and ss_optimizer always name the reference class.

Schedule-free optimizers (AdamWScheduleFree, RAdamScheduleFree, SGDScheduleFree,
ProdigyPlusScheduleFree) take their steps on a training iterate and evaluate an average:
the loop calls train_mode(opt) before the first step (and after loading a state) and
wraps saves, samples and validation in `with eval_mode(opt):` (optim/schedulefree.py).
build_optimizer already leaves them in train mode, as kohya does.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config.schema import TrainConfig
from ..errors import ConfigError, closest
from .groupscale import SCALABLE, is_adaptive, scaled_class
from .schedulefree import eval_mode, in_train_mode, schedule_free_warnings, train_mode

__all__ = ["OPTIMIZERS", "Spec", "build_optimizer", "describe_optimizer", "eval_mode", "in_train_mode",
           "optimizer_kwargs", "optimizer_warnings", "resolve_optimizer", "train_mode"]


@dataclass(frozen=True)
class Spec:
    module: str
    cls: str
    defaults: dict[str, Any] = field(default_factory=dict)  # used unless optimizer_args set them
    fixed: dict[str, Any] = field(default_factory=dict)     # always passed
    package: str | None = None                               # pip name when it is an optional extra
    needs_cuda: bool = False
    fast: str | None = None  # module.Class of lorakit's foreach version, used unless implementation="reference"


_BNB = dict(package="bitsandbytes", needs_cuda=True)
_FP, _FD = "lorakit.optim.fast_prodigy", "lorakit.optim.fast_dadapt"
_SF = dict(package="schedulefree")

# lower-case kohya name -> where the class lives
OPTIMIZERS: dict[str, Spec] = {
    "adamw": Spec("torch.optim", "AdamW"),
    "sgdnesterov": Spec("torch.optim", "SGD", defaults={"momentum": 0.9}, fixed={"nesterov": True}),
    "lion": Spec("lorakit.optim.lion", "Lion"),
    "adafactor": Spec("transformers.optimization", "Adafactor", defaults={"relative_step": True}),
    "adamw8bit": Spec("bitsandbytes.optim", "AdamW8bit", **_BNB),
    "lion8bit": Spec("bitsandbytes.optim", "Lion8bit", **_BNB),
    "pagedadamw": Spec("bitsandbytes.optim", "PagedAdamW", **_BNB),
    "pagedadamw8bit": Spec("bitsandbytes.optim", "PagedAdamW8bit", **_BNB),
    "pagedadamw32bit": Spec("bitsandbytes.optim", "PagedAdamW32bit", **_BNB),
    "pagedlion8bit": Spec("bitsandbytes.optim", "PagedLion8bit", **_BNB),
    "prodigy": Spec("prodigyopt", "Prodigy", fast=_FP + ".Prodigy"),
    "dadaptadam": Spec("dadaptation", "DAdaptAdam", fast=_FD + ".DAdaptAdam"),
    # kohya: "DAdaptation" means DAdaptAdamPreprint since 2023-05-25 (DAdaptAdam before)
    "dadaptation": Spec("dadaptation.experimental", "DAdaptAdamPreprint", fast=_FD + ".DAdaptAdamPreprint"),
    "dadaptadampreprint": Spec("dadaptation.experimental", "DAdaptAdamPreprint",
                                 fast=_FD + ".DAdaptAdamPreprint"),
    "dadaptadagrad": Spec("dadaptation", "DAdaptAdaGrad"),
    "dadaptadan": Spec("dadaptation", "DAdaptAdan"),
    "dadaptadanip": Spec("dadaptation.experimental", "DAdaptAdanIP"),
    "dadaptlion": Spec("dadaptation", "DAdaptLion", fast=_FD + ".DAdaptLion"),
    "dadaptsgd": Spec("dadaptation", "DAdaptSGD"),
    # schedule-free (kohya passes no defaults); kohya reaches ProdigyPlusScheduleFree by its
    # dotted path prodigyplus.ProdigyPlusScheduleFree, which resolves to the same class
    "adamwschedulefree": Spec("schedulefree", "AdamWScheduleFree", **_SF),
    "radamschedulefree": Spec("schedulefree", "RAdamScheduleFree", **_SF),
    "sgdschedulefree": Spec("schedulefree", "SGDScheduleFree", **_SF),
    "prodigyplusschedulefree": Spec("prodigyplus", "ProdigyPlusScheduleFree", package="prodigy-plus-schedule-free"),
}


def _import(module: str, cls: str, name: str, package: str | None) -> type:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        pkg = package or module.split(".")[0]
        raise ConfigError(f"optimizer '{name}' needs the '{pkg}' package, which is not installed",
                          key="optimizer_type", fix=f"pip install {pkg}, or choose another optimizer") from None
    try:
        return getattr(mod, cls)
    except AttributeError:
        raise ConfigError(f"'{module}' has no optimizer '{cls}'", key="optimizer_type",
                          fix="check the spelling, or update the package") from None


def unknown_optimizer(name: str) -> ConfigError | None:
    """The error for an optimizer_type that names no optimizer (a "did you mean"), else None. Only the
    name: whether its package is installed is resolve_optimizer's question."""
    n = name.strip()
    if n.lower() in OPTIMIZERS or "." in n or isinstance(getattr(torch.optim, n, None), type):
        return None
    names = sorted({s.cls if s.module != "dadaptation.experimental" or k != "dadaptation"
                    else "DAdaptation" for k, s in OPTIMIZERS.items()})
    torch_names = [k for k, v in vars(torch.optim).items()
                   if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)]
    guess = closest(n, names + torch_names)
    return ConfigError(f"unknown optimizer '{name}'", key="optimizer_type",
                       fix=(f"did you mean '{guess}'? " if guess else "") +
                           f"use one of {', '.join(names)}, a torch.optim class or a module.Class path")


def resolve_optimizer(name: str) -> tuple[type, Spec]:
    """(reference class, spec) for a kohya optimizer name, a torch.optim name or module.Class."""
    error = unknown_optimizer(name)
    if error is not None:
        raise error
    spec = OPTIMIZERS.get(name.strip().lower())
    if spec is None:
        if "." in name:
            mod, _, cls = name.strip().rpartition(".")
            spec = Spec(mod, cls)
        else:
            spec = Spec("torch.optim", name.strip())
    return _import(spec.module, spec.cls, name, spec.package), spec


def _implementation(cfg: TrainConfig, spec: Spec) -> str:
    impl = str(cfg.optimizer_args.get("implementation", "reference")).strip().lower()
    if impl not in ("fast", "reference"):
        raise ConfigError(f"optimizer_args implementation={impl!r} is neither 'fast' nor 'reference'",
                          key="optimizer_args", fix="use implementation=\"fast\" or leave it out")
    if "implementation" in cfg.optimizer_args and spec.fast is None:
        raise ConfigError(f"{cfg.optimizer_type} has only one implementation", key="optimizer_args",
                          fix="remove implementation from optimizer_args")
    return impl


def optimizer_class(cfg: TrainConfig) -> tuple[type, Spec]:
    """The class build_optimizer runs: lorakit's foreach version where there is one (module doc)."""
    cls, spec = resolve_optimizer(cfg.optimizer_type)
    if _implementation(cfg, spec) == "fast" and spec.fast is not None:
        mod, _, name = spec.fast.rpartition(".")
        cls = _import(mod, name, cfg.optimizer_type, None)
    return cls, spec


def optimizer_kwargs(cfg: TrainConfig, spec: Spec) -> dict[str, Any]:
    kw = {**spec.defaults, **cfg.optimizer_args, **spec.fixed}
    if spec.fast is not None:
        kw.pop("implementation", None)  # ours, not the class's
    if spec.cls == "Adafactor" and not kw.get("relative_step") and kw.get("warmup_init"):
        kw["relative_step"] = True  # kohya: warmup_init needs relative_step
    return kw


def adafactor_relative_step(cfg: TrainConfig) -> bool:
    """Adafactor computes its own lr (kohya's default); our lrs then only set the initial value."""
    spec = OPTIMIZERS.get(cfg.optimizer_type.strip().lower())
    return spec is not None and spec.cls == "Adafactor" and bool(optimizer_kwargs(cfg, spec).get("relative_step"))


def optimizer_warnings(cfg: TrainConfig, param_groups: list[dict[str, Any]]) -> list[str]:
    """Things the user should hear about before training (the loop emits them)."""
    cls, spec = resolve_optimizer(cfg.optimizer_type)
    out = []
    lrs = [g["lr"] for g in param_groups if g["lr"] > 0]
    if is_adaptive(cls) and lrs and max(lrs) <= 0.1:
        out.append(f"{cfg.optimizer_type} adapts its step size and expects lrs around 1.0; the largest here is "
                   f"{max(lrs):g}, which scales every step down by that factor")
    if adafactor_relative_step(cfg) and len(set(lrs)) > 1:
        out.append("Adafactor with relative_step=True computes its own lr: unet_lr, text_encoder_lr, the LoRA+ "
                   "ratios and the block lr weights are ignored (set optimizer_args relative_step=False to use them)")
    out += schedule_free_warnings(cfg.optimizer_type, cls, optimizer_kwargs(cfg, spec), lrs, cfg.lr_scheduler,
                                  cfg.lr_scheduler_type, cfg.lr_warmup_steps, cfg.max_grad_norm)
    return out


def build_optimizer(cfg: TrainConfig, param_groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """Groups are [{'params', 'lr', 'name'}] (TE first, then UNet). Different lrs work for every optimizer."""
    cls, spec = optimizer_class(cfg)
    kwargs = optimizer_kwargs(cfg, spec)
    groups = [dict(g) for g in param_groups]
    if spec.needs_cuda and any(p.device.type != "cuda" for g in groups for p in g["params"]):
        raise ConfigError(f"{cfg.optimizer_type} (bitsandbytes) needs a CUDA GPU; the parameters are on the CPU",
                          key="optimizer_type", fix="use AdamW or Lion on the CPU")
    lr: float | None = cfg.learning_rate
    if adafactor_relative_step(cfg):
        lr = None  # kohya: the lr becomes Adafactor's initial lr, set by the schedule
        for g in groups:
            g.pop("lr", None)
    elif is_adaptive(cls) and len({g["lr"] for g in groups if g["lr"] > 0}) > 1:
        if cls.__name__ not in SCALABLE:
            lrs = ", ".join(f"{g.get('name', i)} {g['lr']:g}" for i, g in enumerate(groups))
            raise ConfigError(
                f"{cfg.optimizer_type} cannot train parameter groups at different lrs ({lrs}; its update is not "
                "a step of adjustable size)", key="text_encoder_lr",
                fix=f"set text_encoder_lr = unet_lr and leave out loraplus_* and the block lr weights, or use one "
                    f"of {', '.join(sorted(SCALABLE))}")
        cls = scaled_class(cls)
    try:
        opt = cls(groups, lr=lr, **kwargs)
    except TypeError as e:
        raise ConfigError(f"{cfg.optimizer_type} rejects optimizer_args {cfg.optimizer_args}: {e}",
                          key="optimizer_args", fix="remove or rename the argument") from None
    except ValueError as e:
        raise ConfigError(f"{cfg.optimizer_type}: {e}", key="optimizer_args", fix="check the values") from None
    opt.lorakit_config = cfg  # type: ignore[attr-defined]  # read by build_scheduler (lr_scheduler_type)
    train_mode(opt)  # schedule-free: ready to step (kohya does the same); a no-op for the others
    return opt


def describe_optimizer(cfg: TrainConfig) -> str:
    """kohya's ss_optimizer value: 'module.Class(k=v,...)' of the reference class."""
    cls, spec = resolve_optimizer(cfg.optimizer_type)
    args = ",".join(f"{k}={v}" for k, v in optimizer_kwargs(cfg, spec).items())
    return f"{cls.__module__}.{cls.__name__}" + (f"({args})" if args else "")
