"""Find the targets in the UNet and text encoder, attach one adapter module to each.

kohya's default targets (docs/adapters.md "Default targets"): every Linear and 1x1
Conv inside Transformer2DModel blocks (192 modules in SD1.5) and the text encoder's
CLIPAttention + CLIPMLP linears (72). With conv_dim also ResnetBlock2D, Downsample2D
and Upsample2D: their 3x3 convs get conv_dim/conv_alpha, time_emb_proj and the 1x1
conv_shortcut get network_dim (278 UNet modules). conv_in, conv_out and the time
embedding are never adapted. The algorithm class may change the rules (TargetRules).

Names: ``lora_unet_<UNet module path, '.' -> '_'>`` and always ``<te prefix>text_model_<...>``
for a text encoder (transformers 5's CLIPTextModel has no ``.text_model`` submodule; A1111 and
ComfyUI only load the text_model names). The UNet path is the diffusers one for SD1/SD2 and the
original-layout one for SDXL (the family's ``unet_module_name``: sd-scripts trains its own SDXL UNet
class); the text encoder prefix is ``lora_te_`` with one encoder and ``lora_te1_``, ``lora_te2_``
with two (sd-scripts' networks/lora.py rule).

The adapters are children of the network under their kohya names, so
``network.state_dict()`` has the file's key names (alpha in float32).

kohya settings that change what is built or how it learns (each checked against the
algorithm by check_network_config before the model loads): block_dims & co. and the block
lr weights (blockwise.py), LoRA+ (param_groups), train_norm (norm.py).
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .base import CONV1X1, CONV3X3, LINEAR, UNET_CONV_PARENTS, AdapterModule, TargetRules, fmt_num
from .blockwise import (SD_BLOCKS, BlockTable, block_lr_weights, block_network_args, block_ranks, blocks_for,
                        blockwise_on, count_problems, declared_blocks)
from .forms import FormBoard, FormChoice
from .frobenius import FrobeniusNorms
from .norm import NormModule, build_norm_modules
from .presets import apply_preset
from .registry import get_algorithm

UNET_PREFIX = "lora_unet_"
TE_PREFIX = "lora_te_"


def te_prefixes(n: int) -> tuple[str, ...]:
    """File prefixes of n text encoders: lora_te_ alone, lora_te1_, lora_te2_ for two (as sd-scripts)."""
    return (TE_PREFIX,) if n == 1 else tuple(f"lora_te{i + 1}_" for i in range(n))


TE_PREFIXES = te_prefixes(1) + te_prefixes(2)  # every text-encoder prefix a file may use


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
                 block_lr_weights: Optional[list[float]] = None, block_table: BlockTable = SD_BLOCKS,
                 loraplus_ratios: tuple[Optional[float], Optional[float]] = (None, None),
                 network_module: Optional[str] = None):
        super().__init__()
        self.block_lr_weights = block_lr_weights  # one UNet lr multiplier per block of block_table, or None
        self.block_table = block_table
        self.loraplus_ratios = loraplus_ratios    # (text encoder, UNet): lora_up lr = lr x ratio
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
        self._frobenius: Optional[FrobeniusNorms] = None  # made on the first max-norm step
        # the modules max-norm caps, in a fixed order (delta_norms and cap_norms both walk it each step);
        # LyCORIS leaves the norm offsets out
        self._max_norm_modules = [m for m in self.all_modules() if not isinstance(m, NormModule)]
        # merged_op = "auto": the modules note input shapes to time; decide_forms() times them
        self.forms: Optional[FormBoard] = None
        auto = [m for m in self.all_modules() if m.args.get("merged_op") == "auto"]
        if auto:
            self.forms = FormBoard()
            for m in auto:
                m.forms = FormChoice(self.forms)

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
        """kohya 2.16: TE group first, then UNet; a group with lr 0 is dropped and frozen.

        sd-scripts' splits on top: with block lr weights one UNet group per block, in module order,
        named unet_block<b> at unet_lr x weight; with LoRA+ each group's lora_up parameters go to a
        group of their own, '<name> plus', at its lr x ratio (right after it).
        """
        te_ratio, unet_ratio = self.loraplus_ratios
        parts: list[tuple[str, list[AdapterModule], float, Optional[float]]] = [
            ("textencoder", list(self.text_encoder_modules.values()), text_encoder_lr, te_ratio)]
        if self.block_lr_weights is None:
            parts.append(("unet", list(self.unet_modules.values()), unet_lr, unet_ratio))
        else:
            by_block: dict[int, list[AdapterModule]] = {}
            for name, m in self.unet_modules.items():
                by_block.setdefault(self.block_table.index(name), []).append(m)
            parts += [(f"unet_block{b}", ms, unet_lr * self.block_lr_weights[b], unet_ratio)
                      for b, ms in by_block.items()]
        groups = []
        for name, modules, lr, ratio in parts:
            base: list[torch.nn.Parameter] = []
            plus: list[torch.nn.Parameter] = []
            for m in modules:
                for pname, p in m.named_parameters():
                    (plus if ratio and pname.startswith("lora_up") else base).append(p)
            for gname, params, glr in ((name, base, lr), (f"{name} plus", plus, lr * (ratio or 0.0))):
                if not params:
                    continue
                trainable = glr is not None and glr > 0
                for p in params:
                    p.requires_grad_(trainable)
                if trainable:
                    groups.append({"params": params, "lr": float(glr), "name": gname})
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
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya's max-norm regularization (scale_weight_norms): cap_norms over delta_norms, read at once."""
        norms = self.delta_norms()
        return self.cap_norms([] if norms is None else norms.tolist(), max_norm)

    def delta_norms(self) -> Optional[torch.Tensor]:
        """||delta W||_F (scale included, multiplier not) of every module max-norm caps, on the device
        (None if there is none). Taken from the small factors (frobenius.py): kohya builds each full
        delta W, and reads each norm, a host wait per module per step."""
        mods = self.max_norm_modules()
        if not mods:
            return None
        if self._frobenius is None:
            self._frobenius = FrobeniusNorms()
        return self._frobenius(mods)

    def max_norm_modules(self) -> list[AdapterModule]:
        return self._max_norm_modules

    def cap_norms(self, norms: list[float], max_norm: float) -> tuple[int, float, float]:
        """Given delta_norms() as read: n = max(||dW||, max_norm/2); ratio = min(n, max_norm)/n;
        modules with ratio != 1 are scaled (LoRA: up and down by sqrt(ratio)). Returns (keys_scaled,
        average norm, max norm), the norms after scaling."""
        if not norms:
            return 0, 0.0, 0.0
        norms = list(norms)
        scaled, batch = 0, []
        for i, (m, norm) in enumerate(zip(self.max_norm_modules(), norms)):
            n = max(norm, max_norm / 2)
            ratio = min(n, max_norm) / n
            if ratio != 1:
                pairs = m.delta_scalings(ratio)
                if pairs is None:
                    m.scale_delta(ratio)
                else:
                    batch += pairs
                scaled += 1
            norms[i] = norm * ratio
        if batch:
            with torch.no_grad():  # one foreach kernel for every factor scaled this step
                torch._foreach_mul_([t for t, _ in batch], [f for _, f in batch])
        return scaled, sum(norms) / len(norms), max(norms)


RankOf = Callable[[str, str], Optional[tuple[int, Optional[float]]]]


def build_modules(algo_cls: type[AdapterModule], root: nn.Module, prefix: str, parent_match,
                  rules: TargetRules, rank_of: RankOf, path_fn, module_kwargs: dict[str, Any]
                  ) -> dict[str, AdapterModule]:
    """One module per target; rank_of(name, kind) gives its (dim, alpha), None = not adapted."""
    out: dict[str, AdapterModule] = {}
    for path, child, kind in find_targets(root, parent_match, rules):
        name = prefix + path_fn(path).replace(".", "_")
        rank = rank_of(name, kind)
        if rank is None:
            continue
        if name in out:
            raise ValueError(f"duplicated adapter name: {name}")
        out[name] = algo_cls(name, child, rank[0], rank[1], **module_kwargs)
    return out


def loraplus_ratios(cfg: Any) -> tuple[Optional[float], Optional[float]]:
    """(text encoder, UNet) LoRA+ ratio: the part's own ratio, else loraplus_lr_ratio (sd-scripts' `or`)."""
    return (cfg.loraplus_text_encoder_lr_ratio or cfg.loraplus_lr_ratio,
            cfg.loraplus_unet_lr_ratio or cfg.loraplus_lr_ratio)


def check_network_config(cfg: Any, family: Optional[str] = None) -> None:
    """The kohya network settings the algorithm cannot take, all in one ConfigError (before the model
    loads; again with the loaded model's `family`, and in create_network). An unknown network_type
    fails here too. The block keys' value counts are the family's (sdxl / v2 name it before the load)."""
    algo_cls = get_algorithm(cfg.network_type)
    algo = cfg.network_type
    problems: list[tuple[str, str, str]] = []  # (key, what, fix)
    if blockwise_on(cfg):
        key = "block_dims" if cfg.block_dims is not None else "down_lr_weight"
        if not algo_cls.BLOCKWISE:
            problems.append((key, f"block-wise dims / lr weights are settings of kohya's networks.lora; network_type "
                                  f"{algo} has none", "use network_type lora (kohya LoRA / LoCon) or remove the "
                                                       "block_* and *_lr_weight keys"))
        if cfg.network_preset == "full":
            problems.append((key, "network_preset full adapts conv_in, conv_out and the time embedding, which "
                                  "have no block value of their own", "use network_preset kohya with block settings"))
        table = blocks_for(family) if family is not None else declared_blocks(cfg)
        if table is not None:
            problems += count_problems(cfg, table)
        if cfg.dim_from_weights:
            problems.append(("dim_from_weights", "dim_from_weights takes one rank per layer kind from the file; "
                             "block_dims gives each block its own", "remove dim_from_weights and set block_dims "
                                                                     "to the file's ranks"))
    if any(loraplus_ratios(cfg)) and not algo_cls.LORAPLUS:
        problems.append(("loraplus_lr_ratio", f"LoRA+ scales the lr of lora_up matrices; network_type {algo} "
                                              "has none (kohya and LyCORIS would ignore the ratio)",
                         "use network_type lora or locon, or remove the loraplus_* keys"))
    if cfg.train_norm:
        if not algo_cls.TRAIN_NORM:
            problems.append(("train_norm", f"train_norm is a LyCORIS option; kohya's networks.lora ({algo}) has "
                                           "none", "use network_type locon (LyCORIS LoCon) or remove train_norm"))
        if cfg.network_preset in ("attn-mlp", "attn-only"):
            problems.append(("train_norm", f"network_preset {cfg.network_preset} adapts no block that holds a "
                                           "norm layer", "use network_preset kohya or full, or remove train_norm"))
    if (blockwise_on(cfg) or cfg.train_norm) and cfg.network_weights:
        problems.append(("network_weights", "continuing from network_weights is not implemented with "
                                            "block_dims / block lr weights / train_norm",
                         "resume from a saved state (--resume), or remove network_weights"))
    if problems:
        key, what, fix = problems[0]
        if len(problems) > 1:
            what = "\n  - ".join([f"{len(problems)} network settings conflict:"]
                                 + [f"{k}: {w} (fix: {f})" for k, w, f in problems])
            fix = "see each line"
        raise ConfigError(what, key=key, fix=fix)


def extra_network_args(cfg: Any) -> dict[str, str]:
    """ss_network_args entries of the block, LoRA+ and train_norm settings (sd-scripts/LyCORIS spellings)."""
    out = block_network_args(cfg)
    for key, value in (("loraplus_lr_ratio", cfg.loraplus_lr_ratio),
                       ("loraplus_unet_lr_ratio", cfg.loraplus_unet_lr_ratio),
                       ("loraplus_text_encoder_lr_ratio", cfg.loraplus_text_encoder_lr_ratio)):
        if value:
            out[key] = fmt_num(value)
    if cfg.train_norm:
        out["train_norm"] = "True"
    return out


def create_network(cfg: Any, unet: Optional[nn.Module],
                   text_encoder: Optional[nn.Module] | Sequence[nn.Module], *, multiplier: float = 1.0,
                   unet_module_name: Callable[[str], str] | None = None, family: str = "sd1") -> AdapterNetwork:
    """The adapter network for `cfg` (a TrainConfig): modules built, not yet applied.

    `text_encoder`: one module, or the family's text encoders in file order (SDXL: te1, te2).
    `unet_module_name`: the family's UNet module path in files (SDXL: the original layout);
    None keeps the diffusers path. `family` ("sd1", "sd2", "sdxl") picks the block table of block_dims & co.

    A part is trained (and gets modules) unless network_train_*_only excludes it or its
    resolved lr is 0: kohya would still add zero-initialised modules there, which change
    nothing but the file size.
    """
    algo_cls = get_algorithm(cfg.network_type)
    check_network_config(cfg, family)
    args = algo_cls.parse_args(cfg)  # unknown network_args keys fail here, before any module is built
    rules = algo_cls.target_rules(cfg)
    ranks = algo_cls.rank_settings(cfg)
    table = blocks_for(family)
    blocks = block_ranks(cfg, table)
    if blocks is not None and blocks.conv_dims is not None and not rules.conv3x3:
        # conv_block_dims adapts the conv blocks as conv_dim does (sd-scripts: its target list)
        rules = replace(rules, unet_parents=rules.unet_parents + UNET_CONV_PARENTS, conv3x3=True)
        ranks.by_kind[CONV3X3] = (cfg.network_dim, cfg.conv_alpha)  # kind enabled; blocks give the ranks
    unet_rules, te_rules, by_kind = apply_preset(cfg.network_preset, rules, ranks.by_kind, cfg)
    kw = dict(multiplier=multiplier, dropout=cfg.network_dropout, rank_dropout=cfg.rank_dropout,
              module_dropout=cfg.module_dropout, args=args, **ranks.extra)
    train_unet = unet is not None and not cfg.network_train_text_encoder_only and cfg.resolved_unet_lr() > 0
    encoders = [] if text_encoder is None else \
        [text_encoder] if isinstance(text_encoder, nn.Module) else [t for t in text_encoder if t is not None]
    train_te = bool(encoders) and not cfg.network_train_unet_only and cfg.resolved_text_encoder_lr() > 0
    if not (train_unet or train_te):
        raise ConfigError("nothing to train: the UNet and the text encoder both have learning rate 0",
                        key="unet_lr", fix="set unet_lr or text_encoder_lr above 0")

    def by_kind_rank(name: str, kind: str) -> Optional[tuple[int, Optional[float]]]:
        return by_kind.get(kind)

    te_modules: dict[str, AdapterModule] = {}
    for encoder, prefix in zip(encoders if train_te else [], te_prefixes(len(encoders))):
        te_modules.update(build_modules(algo_cls, encoder, prefix, te_rules.te_match, te_rules, by_kind_rank,
                                        te_path, kw))
    unet_path = unet_module_name or (lambda p: p)
    parents = set(unet_rules.unet_parents)

    def unet_match(names: set[str]) -> bool:
        return bool(names & parents)

    unet_rank = blocks.rank if blocks is not None else by_kind_rank
    try:
        unet_modules = build_modules(algo_cls, unet, UNET_PREFIX, unet_match, unet_rules, unet_rank,
                                     unet_path, kw) if train_unet else {}
    except ValueError as e:  # BlockRanks.rank: a module outside the family's blocks (a custom UNet)
        if blocks is None:
            raise
        raise ConfigError(f"block-wise dims / lr weights follow sd-scripts' {table.family} UNet blocks; this "
                          f"model's UNet has other modules ({e})", key="block_dims" if cfg.block_dims is not None
                          else "down_lr_weight", fix="remove the block_* and *_lr_weight keys for this model") from None
    if cfg.train_norm:  # after every algorithm module, in this order (the seeded initialisation)
        for encoder, prefix in zip(encoders if train_te else [], te_prefixes(len(encoders))):
            te_modules.update(build_norm_modules(encoder, prefix, te_rules.te_match, te_path, kw))
        if train_unet:
            unet_modules.update(build_norm_modules(unet, UNET_PREFIX, unet_match, unet_path, kw))
    return AdapterNetwork(algo_cls, unet_modules, te_modules, train_unet=train_unet,
                          train_text_encoder=train_te,
                          network_args={**algo_cls.network_args(cfg), **extra_network_args(cfg)},
                          multiplier=multiplier, block_lr_weights=block_lr_weights(cfg, table), block_table=table,
                          loraplus_ratios=loraplus_ratios(cfg), network_module=algo_cls.module_for(cfg))
