"""The base adapter module: wraps one nn.Linear / nn.Conv2d of the frozen model.

As kohya does, the original module stays where it is, with its weights (so the
model's state_dict, dtype moves and gradient checkpointing are unaffected); only
its ``forward`` is replaced by :meth:`AdapterModule.forward`:

    y = org(x) + delta_forward(x) * multiplier

An algorithm (one file each, registered with ``@register(name)``) subclasses
AdapterModule and provides at least :meth:`delta_weight` and
:meth:`tensors_to_save`; the default :meth:`delta_forward` then runs the base op
once more with delta W. Rank-structured algorithms override delta_forward with a
cheaper bypass (LoRA: up(down(x))) and use :meth:`rank_dropouts`.

Dropouts (docs/adapters.md "Dropouts") act only while both this module and the wrapped
module are in training mode; sampling with ``unet.eval()`` or ``network.eval()``
never drops anything. They do not depend on ``torch.is_grad_enabled()``:
reentrant gradient checkpointing runs the first forward without grad, and the
recomputation must draw the same masks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .declare import LYCORIS_MODULE, FileFormat, GuiLoraType
from .frobenius import NormFactors
from .kinds import CONV1X1, CONV3X3, LINEAR, fmt_num  # noqa: F401 (also imported from here)

if TYPE_CHECKING:
    from ..config.schema import TrainConfig


UNET_ATTENTION_PARENTS = ("Transformer2DModel",)
UNET_CONV_PARENTS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def _is_clip_target(class_names: set[str]) -> bool:
    # CLIPAttention (transformers 5), CLIPSdpaAttention / CLIPFlashAttention2 (4.x), CLIPMLP
    return any(n == "CLIPMLP" or (n.startswith("CLIP") and "Attention" in n) for n in class_names)


@dataclass(frozen=True)
class TargetRules:
    """Which modules an algorithm adapts (network.py walks the models with these).

    A parent matches when any class name in its MRO is listed (te: `te_match`), so
    subclasses and renamed variants still match. Every nn.Linear / nn.Conv2d
    (groups 1) inside a matched parent is a target unless it is a 3x3 conv and
    `conv3x3` is off, or `child_filter(path_in_parent, module)` returns False.
    """
    unet_parents: tuple[str, ...] = UNET_ATTENTION_PARENTS
    conv3x3: bool = False
    te_match: Callable[[set[str]], bool] = _is_clip_target
    child_filter: Optional[Callable[[str, nn.Module], bool]] = None
    extra_paths: tuple[str, ...] = ()  # modules wrapped by path, outside any matched parent


@dataclass
class RankSettings:
    """dim/alpha per layer kind; a kind missing from `by_kind` is not adapted."""
    by_kind: dict[str, tuple[int, Optional[float]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # algorithm keyword arguments


def lycoris_conv_rank(cfg: Any) -> tuple[int, Optional[float]]:
    """(dim, alpha) of the 3x3 convs by LyCORIS's rule: conv_dim defaults to network_dim and
    conv_alpha to network_alpha (kohya's networks.lora instead adapts no 3x3 conv without conv_dim)."""
    return (cfg.network_dim if cfg.conv_dim is None else cfg.conv_dim,
            cfg.network_alpha if cfg.conv_alpha is None else cfg.conv_alpha)


def fmt_arg(v: Any) -> str:
    """A network_args value as kohya/LyCORIS write it in ss_network_args: True -> 'True', 4 -> '4'."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return str(v)
    if isinstance(v, (int, float)):
        return fmt_num(v)
    return str(v)


# LyCORIS's deprecated spellings (kohya.py create_network): the alias overwrites the name.
ARG_ALIASES = {"use_cp": "use_tucker"}
# Settings that are config keys of their own: in network_args they would be ambiguous.
ARG_CONFIG_KEYS = {"conv_dim": "conv_dim", "conv_alpha": "conv_alpha", "dropout": "network_dropout",
                   "rank_dropout": "rank_dropout", "module_dropout": "module_dropout", "algo": "network_type",
                   **{k: k for k in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas",
                                     "down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold",
                                     "loraplus_lr_ratio", "loraplus_unet_lr_ratio",
                                     "loraplus_text_encoder_lr_ratio", "train_norm")}}
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "none", "")
AUTO_ARGS = ("merged_op",)  # boolean network_args that also take "auto" (adapters/forms.py)


def _parse_arg(algo: str, key: str, value: Any, default: Any) -> Any:
    """One network_args value parsed to the type of its default (kohya passes strings)."""
    def bad(what: str) -> ConfigError:
        return ConfigError(f"network_args {key}={value!r} for {algo}: {what}", key="network_args",
                           fix=f"use a value like {key}={fmt_arg(default) if default is not None else '...'}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()  # LyCORIS: str(v).lower() != "false"; garbage refused here
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        if text == "auto" and key in AUTO_ARGS:
            return "auto"
        raise bad("not a boolean (True/False" + (", or auto)" if key in AUTO_ARGS else ")"))
    if isinstance(default, int):
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise bad("not an integer") from None
        if isinstance(value, bool) or not f.is_integer():
            raise bad("not an integer")
        return int(f)
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise bad("not a number") from None
    if isinstance(default, str):
        return str(value)
    return value


def validate_network_args(algo_cls: type, raw: Optional[dict[str, Any]]) -> dict[str, Any]:
    """cfg.network_args checked against ``algo_cls.ARGS``: every key known, values parsed to the
    default's type, defaults filled in. An unknown key is a ConfigError with a "did you mean"."""
    import difflib

    known: dict[str, Any] = dict(getattr(algo_cls, "ARGS", {}))
    algo = getattr(algo_cls, "algo", algo_cls.__name__)
    out = dict(known)
    items = list((raw or {}).items())
    # an alias is applied after its target, so it overwrites it (as LyCORIS does)
    items.sort(key=lambda kv: str(kv[0]).strip() in ARG_ALIASES)
    for key, value in items:
        name = str(key).strip()
        target = ARG_ALIASES.get(name, name)
        if target in known:
            out[target] = _parse_arg(algo, name, value, known[target])
            continue
        if name in ARG_CONFIG_KEYS:
            fix = (f"set {ARG_CONFIG_KEYS[name]} = {value!r} as its own key, not in network_args"
                   if name != "algo" else f"network_type selects the algorithm ({algo} here); remove algo")
            raise ConfigError(f"network_args '{name}' is a config key of its own", key="network_args", fix=fix)
        names = sorted(set(known) | {a for a, t in ARG_ALIASES.items() if t in known})
        guess = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        accepted = ", ".join(names) if names else "none"
        fix = (f"did you mean '{guess[0]}'? " if guess else "") + f"{algo} accepts: {accepted}"
        raise ConfigError(f"network_args '{name}' is not an option of {algo}", key="network_args", fix=fix)
    return out


class AdapterModule(nn.Module):
    """One adapter on one Linear/Conv2d. Subclasses register themselves with a name."""

    algo: ClassVar[str] = "base"  # network_type (set by @register)
    # --- the declaration (declare.py; the registry answers every lookup from it) ---
    network_module: ClassVar[str] = "networks.lora"  # sd-scripts' --network_module, ss_network_module
    lycoris_algos: ClassVar[tuple[str, ...]] = ()  # LyCORIS algo= names; the first is written
    gui_lora_types: ClassVar[dict[str, GuiLoraType]] = {}  # kohya_ss GUI LoRA_type -> what it passes
    file_formats: ClassVar[tuple[FileFormat, ...]] = ()  # how its modules look in a file
    metadata_label: ClassVar[Optional[str]] = None  # a label for its files that only the metadata gives
    has_rank: ClassVar[bool] = True  # False: network_dim / alpha mean nothing (ss_network_dim "None")
    LYCORIS_CONV_DEFAULTS: ClassVar[bool] = False  # unset conv_dim/conv_alpha take network_dim/alpha
    # network_args this algorithm accepts, with their defaults (the default's type parses strings)
    ARGS: ClassVar[dict[str, Any]] = {}
    # kohya settings the algorithm takes (network.check_network_config refuses the others by name)
    BLOCKWISE: ClassVar[bool] = False   # block_dims / *_lr_weight: sd-scripts networks.lora only
    LORAPLUS: ClassVar[bool] = False    # loraplus_*: parameters named lora_up (sd-scripts and LyCORIS)
    TRAIN_NORM: ClassVar[bool] = True   # train_norm: LyCORIS adds norm modules beside any algorithm
    # network_args not written to ss_network_args: runtime choices, or options that mean nothing here
    UNWRITTEN_ARGS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, org: nn.Module, dim: int, alpha: Optional[float], *,
                 multiplier: float = 1.0, dropout: Optional[float] = None,
                 rank_dropout: Optional[float] = None, module_dropout: Optional[float] = None,
                 args: Optional[dict[str, Any]] = None):
        super().__init__()
        # the validated network_args (create_network passes them); defaults for keys not given
        self.args: dict[str, Any] = {**type(self).ARGS, **(args or {})}
        self.check_target(name, org)
        if dim < 1:
            raise ConfigError(f"{name}: rank {dim} must be at least 1", key="network_dim")
        self.name = name
        self.dim = int(dim)
        alpha = float(self.dim if alpha is None or alpha == 0 else alpha)
        self.register_buffer("alpha", torch.tensor(alpha, dtype=torch.float32))
        self.scale = alpha / self.dim
        self.multiplier = float(multiplier)
        self.dropout = dropout or None
        self.rank_dropout = rank_dropout or None
        self.module_dropout = module_dropout or None
        self._org = [org]  # a list keeps the frozen module out of parameters() and state_dict()
        self._org_forward: Optional[Callable[..., torch.Tensor]] = None
        self._forward_was_instance_attr = False

    @classmethod
    def check_target(cls, name: str, org: nn.Module) -> None:
        """TypeError unless this class can wrap `org` (here: a Linear or an ungrouped Conv2d)."""
        if not isinstance(org, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"{name}: {type(org).__name__} is not a Linear or Conv2d")
        if isinstance(org, nn.Conv2d) and org.groups != 1:
            raise TypeError(f"{name}: grouped convolutions are not supported")

    # --- the wrapped module -------------------------------------------------------
    @property
    def org(self) -> nn.Module:
        return self._org[0]

    @property
    def is_conv(self) -> bool:
        return isinstance(self.org, nn.Conv2d)

    @property
    def kind(self) -> str:
        if not self.is_conv:
            return LINEAR
        return CONV1X1 if tuple(self.org.kernel_size) == (1, 1) else CONV3X3

    @property
    def applied(self) -> bool:
        return self._org_forward is not None

    def op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's operation with another weight and no bias."""
        org = self.org
        if self.is_conv:
            return F.conv2d(x, weight, None, org.stride, org.padding, org.dilation, org.groups)
        return F.linear(x, weight)

    def plain_call(self, args: tuple, kwargs: dict) -> bool:
        """A plain Linear/Conv2d call with the adapter active: the merged form may run."""
        return not (args or kwargs) and self.multiplier != 0 and self.applied

    def dropped(self, dw: torch.Tensor) -> torch.Tensor:
        """network_dropout on the elements of delta W while training (scaled 1/(1-p))."""
        if self.dropout and self.dropouts_active():
            return F.dropout(dw, p=self.dropout, training=True)
        return dw

    def merged_call(self, x: torch.Tensor, delta: Callable[[], torch.Tensor],
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """forward in the merged form: module dropout (one draw, as in the 2-op form), then
        op(x, W + multiplier * delta()); delta() applies any network dropout itself."""
        if self.module_dropout and self.dropouts_active() and torch.rand(1) < self.module_dropout:
            return self._org_forward(x)
        return self.merged_forward(x, delta(), bias)

    def merged_forward(self, x: torch.Tensor, dw: torch.Tensor,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """op(x, W + multiplier * dw) with the wrapped layer's bias (or `bias`): one op where the
        bypass runs two or three (docs/adapters.md "Speed"). No per-sample dropout can act
        in this form."""
        w = self.org.weight
        dw = dw.to(w.device)
        if dw.dtype == w.dtype:  # the multiplier inside the sum: one pass over the full-size weight, not two
            weight = w + dw if self.multiplier == 1 else torch.add(w, dw, alpha=self.multiplier)
        else:
            weight = w + (dw * self.multiplier).to(w.dtype)
        return self.weight_forward(x, weight, bias)

    def weight_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                       ) -> torch.Tensor:
        """The wrapped layer's op with `weight` (and its own bias, or `bias`)."""
        org = self.org
        bias = org.bias if bias is None else bias
        if self.is_conv:
            return org._conv_forward(x, weight, bias)  # honours padding_mode
        return F.linear(x, weight, bias)

    # --- apply / restore ----------------------------------------------------------
    def apply(self, fn: Optional[Callable[[nn.Module], None]] = None):  # type: ignore[override]
        """Replace the wrapped module's forward. With `fn`, this is nn.Module.apply(fn)."""
        if fn is not None:
            return super().apply(fn)
        if self._org_forward is None:
            org = self.org
            self._forward_was_instance_attr = "forward" in org.__dict__
            self._org_forward = org.forward
            org.forward = self.forward
        return self

    apply_to = apply  # kohya's name

    def restore(self) -> None:
        """Give the wrapped module its own forward back (idempotent)."""
        if self._org_forward is None:
            return
        org = self.org
        if self._forward_was_instance_attr:
            org.forward = self._org_forward
        else:
            org.__dict__.pop("forward", None)
        self._org_forward = None

    # --- forward -------------------------------------------------------------------
    def dropouts_active(self) -> bool:
        return self.training and self.org.training

    def base_output(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, bool]:
        """The wrapped layer's output, and whether the adapter sits this call out (multiplier 0, or
        module dropout drew it)."""
        if self._org_forward is None:
            raise RuntimeError(f"{self.name}: call apply() before running the adapter")
        out = self._org_forward(x, *args, **kwargs)
        skip = self.multiplier == 0 or bool(
            self.module_dropout and self.dropouts_active() and torch.rand(1) < self.module_dropout)
        return out, skip

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out, skip = self.base_output(x, *args, **kwargs)
        if skip:
            return out
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.param_dtype())
        # Under autocast the adapter's matmuls/convs run in the autocast dtype whatever x's dtype
        # is, so casting x up first only adds a copy in forward and one in backward per module
        # (about 700 kernels per SD1.5 step); it would change no value (a bf16 -> fp32 -> bf16
        # round trip is exact).
        return self.add_delta(out, *self.scaled_delta(x))

    def add_delta(self, out: torch.Tensor, delta: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
        """out + delta * factor * multiplier, in out's dtype."""
        alpha = factor * self.multiplier
        if delta.dtype != out.dtype:
            return out + (delta * alpha).to(out.dtype)
        # one kernel for the scale, the multiplier and the sum, and no product in backward when alpha
        # is 1: separate products cost two kernels forward and two backward per adapted layer, and at
        # batch 1 on a GPU each takes about as long as the layer's own small matmul
        return out + delta if alpha == 1 else torch.add(out, delta, alpha=alpha)

    def scaled_delta(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """(d, factor) with d * factor = delta_forward(x); bypass adapters return their scale as the
        factor, so that forward folds it into the sum."""
        return self.delta_forward(x), 1.0

    def param_dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float32

    def delta_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The adapter's added output for input x, scale included, multiplier excluded.

        Default: the base op once more with delta W (LyCORIS's and peft's route), with
        network_dropout on the elements of delta W while training (scaled 1/(1-p)), as the
        merged-op algorithms do.
        """
        return self.op(x, self.dropped(self.delta_weight()).to(x.dtype))

    def rank_dropouts(self, h: torch.Tensor) -> tuple[torch.Tensor, float]:
        """kohya 2.11 on a rank-structured hidden h (rank on dim 1 for convs, last dim for linears).

        network_dropout: F.dropout on h; rank_dropout: a (sample, rank) mask, the
        scale then multiplied by 1/(1-p). Returns (h, scale factor).
        """
        if not self.dropouts_active():
            return h, 1.0
        factor = 1.0
        if self.dropout:
            h = F.dropout(h, p=self.dropout, training=True)
        if self.rank_dropout:
            r = h.shape[1] if self.is_conv else h.shape[-1]
            keep = torch.rand((h.shape[0], r), device=h.device) > self.rank_dropout
            if self.is_conv:
                keep = keep.view(h.shape[0], r, *([1] * (h.dim() - 2)))
            else:
                keep = keep.view(h.shape[0], *([1] * (h.dim() - 2)), r)
            h = h * keep.to(h.dtype)
            factor = 1.0 / (1.0 - self.rank_dropout)
        return h, factor

    # --- per algorithm ---------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        """delta W in the wrapped weight's shape, scale included, multiplier excluded."""
        raise NotImplementedError

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        """Tensor names (without '<name>.') as the kohya/LyCORIS file format has them."""
        return {k: v for k, v in self.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load this module's tensors from a file (names as tensors_to_save)."""
        own = self.state_dict()
        if set(own) - set(tensors) - {"alpha"} or set(tensors) - set(own):
            raise self.other_tensors(tensors, own)
        with torch.no_grad():
            for k, v in tensors.items():
                self.copy_in(k, v, own[k])
            if "alpha" in own and "alpha" not in tensors:
                self.alpha.fill_(self.dim)  # loaders read a file without alpha as alpha = dim
        self.refresh_scale()

    def other_tensors(self, tensors: dict[str, Any], need: Any) -> ConfigError:
        """The error for a file whose module has other tensors than this module's `need`."""
        article = "an" if self.algo[:1] in "aeiou" else "a"
        return ConfigError(f"{self.name}: the file has tensors {sorted(tensors)}, {article} {self.algo} module needs "
                           f"{sorted(need)}", key="network_type",
                           fix="load the file with the network_type it was trained with")

    def copy_in(self, k: str, v: torch.Tensor, dst: torch.Tensor, key: str = "network_dim",
                fix: str = "set network_dim / conv_dim to the values the file was trained with") -> None:
        """Copy the file's tensor `k` into `dst` (same number of elements, else a ConfigError)."""
        if v.numel() != dst.numel():
            raise ConfigError(f"{self.name}.{k}: shape {tuple(v.shape)} in the file, {tuple(dst.shape)} here",
                              key=key, fix=fix)
        dst.copy_(v.reshape(dst.shape))

    def refresh_scale(self) -> None:
        alpha = float(self.alpha)
        self.scale = (alpha if alpha else self.dim) / self.dim

    def norm_factors(self) -> NormFactors:
        """(scale, factors) with ||delta_weight()|| = |scale| * prod ||factor|| (frobenius.py), so max-norm
        measures the module without building delta W; None: it builds delta_weight() instead."""
        return None

    def delta_scalings(self, ratio: float) -> Optional[list[tuple[torch.Tensor, float]]]:
        """(parameter, factor) pairs whose in-place products scale delta W by `ratio`; None if the
        algorithm scales otherwise (its own scale_delta)."""
        return None

    @torch.no_grad()
    def scale_delta(self, ratio: float) -> None:
        """Multiply delta W by `ratio` (max-norm regularization)."""
        pairs = self.delta_scalings(ratio)
        if pairs is None:
            raise NotImplementedError(f"{self.algo} does not support max-norm regularization")
        for t, factor in pairs:
            t.mul_(factor)

    # --- network hooks (class level) ---------------------------------------------------
    @classmethod
    def parse_args(cls, cfg: "TrainConfig") -> dict[str, Any]:
        """cfg.network_args validated against ARGS, defaults filled in."""
        return validate_network_args(cls, cfg.network_args)

    @classmethod
    def target_rules(cls, cfg: Any) -> TargetRules:
        """kohya's defaults: Transformer2DModel (+ ResNet/Down/Upsample with conv_dim), CLIP attn/MLP."""
        conv = cls.rank_settings(cfg).by_kind.get(CONV3X3) is not None
        return TargetRules(unet_parents=UNET_ATTENTION_PARENTS + (UNET_CONV_PARENTS if conv else ()),
                           conv3x3=conv)

    @classmethod
    def rank_settings(cls, cfg: Any) -> RankSettings:
        """kohya networks/lora.py: Linear and 1x1 conv get network_dim/alpha, 3x3 convs conv_dim/alpha."""
        kinds: dict[str, tuple[int, Optional[float]]] = {
            LINEAR: (cfg.network_dim, cfg.network_alpha), CONV1X1: (cfg.network_dim, cfg.network_alpha)}
        if cls.LYCORIS_CONV_DEFAULTS:
            kinds[CONV3X3] = lycoris_conv_rank(cfg)
        elif cfg.conv_dim is not None:
            kinds[CONV3X3] = (cfg.conv_dim, cfg.conv_alpha)
        return RankSettings(kinds)

    @classmethod
    def module_for(cls, cfg: Any) -> str:
        """ss_network_module for the network `cfg` builds: the sd-scripts module that rebuilds it."""
        return cls.network_module

    @classmethod
    def network_args(cls, cfg: Any) -> dict[str, str]:
        """The ss_network_args dict, the --network_args strings that rebuild this network in
        sd-scripts: conv_dim/conv_alpha (with a rank), the dropouts, and for lycoris.kohya its algo
        and the algorithm's options (all of them, as LyCORIS files carry them)."""
        lycoris = cls.module_for(cfg) == LYCORIS_MODULE
        out: dict[str, str] = {"algo": cls.lycoris_algos[0]} if lycoris else {}
        conv = cls.rank_settings(cfg).by_kind.get(CONV3X3) if cls.has_rank else None
        if conv is not None:
            out["conv_dim"] = fmt_num(conv[0])
            out["conv_alpha"] = fmt_num(conv[0] if conv[1] is None else conv[1])
        if cfg.rank_dropout:
            out["rank_dropout"] = fmt_num(cfg.rank_dropout)
        if cfg.module_dropout:
            out["module_dropout"] = fmt_num(cfg.module_dropout)
        if lycoris:
            out.update((k, fmt_arg(v)) for k, v in cls.parse_args(cfg).items() if k not in cls.UNWRITTEN_ARGS)
        return out

    @classmethod
    def metadata_dims(cls, cfg: Any) -> tuple[str, str]:
        """(ss_network_dim, ss_network_alpha): "None" for both where the type has no rank, as
        sd-scripts writes an unset network_dim."""
        if not cls.has_rank:
            return "None", "None"
        return str(cfg.network_dim), str(cfg.network_alpha if cfg.network_alpha is not None else cfg.network_dim)

    # --- merging -------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, multiplier: Optional[float] = None) -> None:
        """Add multiplier * delta W into the wrapped weight (restore() first to avoid doubling)."""
        m = self.multiplier if multiplier is None else multiplier
        w = self.org.weight
        w.copy_((w.float() + m * self.merge_delta().to(w.device)).to(w.dtype))

    def merge_delta(self) -> torch.Tensor:
        """The float32 delta merge() adds (scaled by the multiplier): delta W, or W' - W for DoRA."""
        return self.delta_weight().float()

    def extra_repr(self) -> str:
        return f"{self.name}, dim={self.dim}, alpha={float(self.alpha):g}, kind={self.kind}"


def kaiming_down_(w: torch.Tensor) -> None:
    """LoRA's down init (Microsoft's / kohya's): kaiming_uniform with a=sqrt(5)."""
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))
