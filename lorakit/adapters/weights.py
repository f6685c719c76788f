"""network_weights / dim_from_weights: continue training from an existing adapter file.

sd-scripts loads ``--network_weights`` with ``load_state_dict(strict=False)`` after building
the network from the config (its own comment: "FIXME consider alpha of weights"), so a file
of another rank fails late, one of another alpha trains at the config's scale but saves the
file's alpha, and modules on one side only are dropped or left fresh without a word. Here:

Before the model loads (:func:`read_weights_file`, :func:`resolve_dims`):
- the file is a readable .safetensors adapter (kohya / LyCORIS / lorakit key layout, not a
  checkpoint nor a diffusers/peft LoRA) and every module's file format (read from its tensor
  names, as ``lorakit inspect``) is one that network_type writes (each type declares its
  formats, adapters/declare.py): lora / locon / dylora share the LoRA format; Tucker LoCon
  needs locon; the others need their own name;
- options visible in the tensors (use_tucker, dora_wd, and what the format declares:
  decompose_both, train_on_input, the OFT constraint and rescale) must be set in network_args
  as the file was trained;
- the rank of each module comes from its tensors, where its format says (lora_down /
  hada_w1_b / lokr_w*_b / a2 shape[0]; OFT: the block layout), its alpha from ``alpha`` (rank
  when absent). Layer kinds: 3x3 convs (conv_dim / conv_alpha) are told by a Tucker tensor or a
  4-D kernel where the format has one, else by the module name (resnets' conv1/conv2,
  down/upsamplers, conv_in/conv_out); every other module takes network_dim / network_alpha.
- dim_from_weights: network_dim / network_alpha (and conv_dim / conv_alpha, unset when the
  file adapts no 3x3 conv) become the file's; all modules of one kind must agree, since a
  lorakit network has one rank per kind. Without it, a module whose rank or alpha differs
  from the config is a ConfigError naming it.

After the network is built (:func:`load_into`), loading is strict: a module the file has and
the network lacks, or the reverse, is a ConfigError naming it. One exception: when the file
has no module at all of one part (a UNet-only file, or a text-encoder-only one), that part's
modules start fresh (zero delta) and a warning says so. Tensors are converted to the
network's float32 on copy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import ConfigError, UserError
from . import registry
from .base import CONV3X3, LINEAR
from .declare import FileFormat
from .network import TE_PREFIXES, UNET_PREFIX, normalise_te_key

KEY = "network_weights"
# names of the 3x3 convs of the UNet: SD1/2 in kohya's diffusers-layout names, SDXL in the original
# layout (resnet in_layers.2 / out_layers.3, downsampler op, upsampler conv, conv_in, conv_out)
CONV3X3_NAME = re.compile(r"(_resnets_\d+_conv[12]|_(down|up)samplers_\d+_conv|^lora_unet_conv_(in|out)"
                          r"|_\d+_0_(in_layers_2|out_layers_3)|_middle_block_[02]_(in_layers_2|out_layers_3)"
                          r"|^lora_unet_input_blocks_\d+_0_op|^lora_unet_output_blocks_\d+_[12]_conv"
                          r"|^lora_unet_input_blocks_0_0|^lora_unet_out_2)$")


@dataclass
class WeightsFile:
    path: str
    modules: dict[str, dict[str, torch.Tensor]]  # module name (TE names normalised) -> tensors
    algos: dict[str, str]                        # module name -> algorithm label (inspect's)
    metadata: dict[str, str] = field(default_factory=dict)
    formats: dict[str, FileFormat] = field(default_factory=dict)  # module name -> file format


def read_weights_file(path: str) -> WeightsFile:
    """The adapter file's tensors grouped per module; ConfigError(key network_weights) if it is none."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("the network_weights file does not exist", file=str(p), key=KEY,
                          fix="give the path of an adapter .safetensors file (e.g. an earlier run's output)")
    if p.suffix.lower() != ".safetensors":
        raise ConfigError(f"network_weights must be a .safetensors file, not '{p.suffix}'", file=str(p), key=KEY,
                          fix="convert the adapter to .safetensors (pickled .pt/.ckpt files are not loaded)")
    from .file import read_adapter_file
    try:
        tensors, metadata = read_adapter_file(p)
    except UserError as e:
        raise ConfigError(e.message, file=str(p), key=KEY, fix=e.fix) from None
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, dot, sub = normalise_te_key(key).partition(".")
        if dot and name.startswith((UNET_PREFIX,) + TE_PREFIXES):
            modules.setdefault(name, {})[sub] = t
    if not modules:
        peft = any("lora_A" in k or "lora_linear_layer" in k for k in tensors)
        raise ConfigError("a diffusers/peft-format LoRA (lora_A/lora_B keys), not a kohya/LyCORIS adapter" if peft
                          else f"not an adapter file: no lora_unet_* / lora_te_* tensors ({len(tensors)} tensors)",
                          file=str(p), key=KEY,
                          fix="give a kohya/LyCORIS/lorakit adapter file; a model checkpoint is not an adapter")
    algos, formats = {}, {}
    for name, ts in modules.items():
        fmt = registry.classify(ts)
        if fmt is None:
            raise ConfigError(f"module {name} has tensors of no known algorithm: {sorted(ts)}", file=str(p),
                              key=KEY, fix="give an adapter file written by lorakit, kohya or LyCORIS")
        formats[name], algos[name] = fmt, registry.label(fmt, metadata)
    return WeightsFile(str(p), modules, algos, metadata, formats)


# ---- what a module's tensors say (its format's declaration) -----------------------------------
def is_conv3x3(name: str, fmt: FileFormat, ts: dict[str, torch.Tensor]) -> bool:
    if fmt.tucker_key is not None and fmt.tucker_key in ts:  # only 3x3 convs have the Tucker form
        return True  # (its down is 1x1, so this comes first)
    if fmt.kernel_key is not None and fmt.kernel_key in ts and ts[fmt.kernel_key].dim() == 4:
        return tuple(ts[fmt.kernel_key].shape[2:]) != (1, 1)
    return bool(CONV3X3_NAME.search(name))


def file_alpha(fmt: FileFormat, ts: dict[str, torch.Tensor]) -> Optional[float]:
    """The module's alpha as the loaders read it (rank when absent); None where alpha is no LoRA alpha."""
    dim = fmt.rank(ts)
    if dim is None:  # iA3, full, full-matrix LoKr (scale 1), OFT (alpha is the constraint)
        return None
    return float(f"{float(ts['alpha']):.7g}") if "alpha" in ts else float(dim)  # float32 -> short decimal


def file_args(fmt: FileFormat, ts: dict[str, torch.Tensor]) -> dict[str, Any]:
    """network_args the tensors prove the file was trained with."""
    out: dict[str, Any] = {}
    if fmt.tucker_key is not None and fmt.tucker_key in ts:
        out["use_tucker"] = True
    if "dora_scale" in ts:
        out["dora_wd"] = True
    out.update(fmt.options(ts))
    return out


# ---- before the model loads ------------------------------------------------------------------
def _expected_dims(cfg: Any) -> dict[str, Optional[tuple[int, Optional[float]]]]:
    """{'network': (dim, alpha), 'conv': (dim, alpha) or None} as create_network would use them."""
    from .presets import apply_preset
    from .registry import get_algorithm

    algo_cls = get_algorithm(cfg.network_type)
    _, _, by_kind = apply_preset(cfg.network_preset, algo_cls.target_rules(cfg), algo_cls.rank_settings(cfg).by_kind,
                                 cfg)
    return {"network": by_kind.get(LINEAR), "conv": by_kind.get(CONV3X3)}


def check_algorithm(cfg: Any, wf: WeightsFile) -> None:
    from .registry import get_algorithm

    ntype = get_algorithm(cfg.network_type).algo
    for name, algo in wf.algos.items():
        can = registry.builders(wf.formats[name])
        if ntype not in can:
            want = can[0]
            raise ConfigError(f"the file is a {algo} adapter (e.g. {name}); network_type is {cfg.network_type}",
                              file=wf.path, key=KEY, fix=f"set network_type = {want!r} to continue this file, or "
                                                         "give a file of the network_type you train")
    args = get_algorithm(cfg.network_type).parse_args(cfg)
    for name, algo in wf.algos.items():
        for k, v in file_args(wf.formats[name], wf.modules[name]).items():
            if k in args and args[k] != v:
                raise ConfigError(f"the file was trained with network_args {k}={v} (e.g. {name}); the config has "
                                  f"{k}={args[k]}", file=wf.path, key="network_args",
                                  fix=f"set network_args {k}={v}")


def resolve_dims(cfg: Any, wf: WeightsFile) -> Any:
    """cfg with the file's ranks (dim_from_weights), or cfg unchanged after checking they agree."""
    check_algorithm(cfg, wf)
    groups: dict[str, list[str]] = {"network": [], "conv": []}
    for name in wf.modules:
        groups["conv" if is_conv3x3(name, wf.formats[name], wf.modules[name]) else "network"].append(name)
    expected = _expected_dims(cfg)
    update: dict[str, Any] = {}
    for kind, names in groups.items():
        dim_key, alpha_key = ("conv_dim", "conv_alpha") if kind == "conv" else ("network_dim", "network_alpha")
        hints = {n: wf.formats[n].hint(wf.modules[n]) for n in names}
        if not names or all(h is None for h in hints.values()):
            if kind == "conv" and not names and cfg.dim_from_weights:
                update.update(conv_dim=None, conv_alpha=None)  # the file adapts no 3x3 conv
            continue  # no rank to read (iA3, full)
        alphas = {n: file_alpha(wf.formats[n], wf.modules[n]) for n in names}
        if cfg.dim_from_weights:
            dim = next((d for d in sorted({h for h in hints.values() if h is not None})
                        if all(wf.formats[n].fits(wf.modules[n], d) for n in names)), None)
            if dim is None:
                a, b = _two_different(hints)
                raise ConfigError(f"the file's {kind} modules have different ranks ({a}: {hints[a]}, {b}: "
                                  f"{hints[b]}); lorakit trains one {dim_key} for all of them", file=wf.path,
                                  key="dim_from_weights", fix="continue this file with another tool, or start fresh")
            known = {n: a for n, a in alphas.items() if a is not None}
            if len(set(known.values())) > 1:
                a, b = _two_different(known)
                raise ConfigError(f"the file's {kind} modules have different alphas ({a}: {known[a]}, {b}: "
                                  f"{known[b]}); lorakit trains one {alpha_key} for all of them", file=wf.path,
                                  key="dim_from_weights", fix="continue this file with another tool, or start fresh")
            update[dim_key] = dim
            if known:  # none for rank-scale-free modules (full-matrix LoKr, OFT): the config's alpha stays
                update[alpha_key] = next(iter(known.values()))
            continue
        want = expected[kind]
        if want is None:
            first = names[0]
            raise ConfigError(f"the file adapts 3x3 convs (e.g. {first}, rank {hints[first]}) but {dim_key} is unset",
                              file=wf.path, key=dim_key,
                              fix=f"set {dim_key} = {hints[first]} (and {alpha_key}), or dim_from_weights = true")
        dim, alpha = want
        for n in names:
            if not wf.formats[n].fits(wf.modules[n], dim):
                raise ConfigError(f"module {n} has rank {hints[n]} in the file, {dim_key} is {dim}", file=wf.path,
                                  key=dim_key, fix=f"set {dim_key} = {hints[n]}, or dim_from_weights = true to take "
                                                   "the ranks from the file")
        want_alpha = float(dim if not alpha else alpha)
        for n, a in alphas.items():
            if a is not None and abs(a - want_alpha) > 1e-6 * max(1.0, abs(want_alpha)):
                raise ConfigError(f"module {n} has alpha {a:g} in the file, {alpha_key} is {want_alpha:g}",
                                  file=wf.path, key=alpha_key,
                                  fix=f"set {alpha_key} = {a:g}, or dim_from_weights = true to take the ranks and "
                                      "alphas from the file")
    return cfg.model_copy(update=update) if update else cfg


def _two_different(values: dict[str, Any]) -> tuple[str, str]:
    names = list(values)
    first = names[0]
    return first, next(n for n in names[1:] if values[n] != values[first])


def prepare(cfg: Any) -> tuple[Any, Optional[WeightsFile]]:
    """(cfg with the ranks to build, the file) for a fresh run; (cfg, None) without network_weights."""
    if not cfg.network_weights:
        if cfg.dim_from_weights:
            raise ConfigError("dim_from_weights is set but network_weights is not", key="dim_from_weights",
                              fix="set network_weights to the adapter file to take the ranks from, or unset "
                                  "dim_from_weights")
        return cfg, None
    wf = read_weights_file(cfg.network_weights)
    return resolve_dims(cfg, wf), wf


# ---- after the network is built ---------------------------------------------------------------
def load_into(network: Any, wf: WeightsFile) -> list[str]:
    """Copy the file's tensors into `network` (strict, see the module docstring); returns warnings."""
    own = {m.name: m for m in network.all_modules()}
    warnings = []
    for prefix, part, trained in ((TE_PREFIXES, "text-encoder", network.train_text_encoder),
                                  (UNET_PREFIX, "UNet", network.train_unet)):
        in_file = [n for n in wf.modules if n.startswith(prefix)]
        in_net = [n for n in own if n.startswith(prefix)]
        if not in_file and in_net:
            warnings.append(f"network_weights has no {part} modules: the {len(in_net)} {part} modules start fresh")
            continue
        extra = [n for n in in_file if n not in own]
        if extra:
            fix = (f"train the {part} too ({'text_encoder_lr' if prefix == TE_PREFIXES else 'unet_lr'} above 0, "
                   f"no network_train_*_only that excludes it), or use a file without {part} modules"
                   if not trained else "set conv_dim / network_preset as the file was trained (or dim_from_weights "
                                       "= true), on the same base model architecture")
            raise ConfigError(f"the file has {len(extra)} {part} modules this network does not build, e.g. "
                              f"{extra[0]}", file=wf.path, key=KEY, fix=fix)
        lacking = [n for n in in_net if n not in wf.modules]
        if lacking:
            raise ConfigError(f"this network builds {len(lacking)} {part} modules the file lacks, e.g. {lacking[0]}",
                              file=wf.path, key=KEY, fix="set conv_dim / network_preset as the file was trained "
                                                         "(unset conv_dim if it adapts no 3x3 conv)")
    for name, ts in wf.modules.items():
        own[name].load_tensors(ts)
    return warnings
