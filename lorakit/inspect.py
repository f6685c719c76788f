"""`lorakit inspect FILE`: what an adapter file holds and which UIs load it.

Per module the algorithm is read from the tensor names (adapter-format.md "Math and
tensors"); the rank from the tensor the loaders read it from (lora_down.shape[0],
hada_w1_b.shape[0], lokr_w1_b/lokr_w2_b.shape[0], a2.weight.shape[0] for GLoRA), alpha from
the ``alpha`` tensor (rank when absent). DyLoRA files are LoRA files: only the metadata
(networks.dylora / algo dylora) tells them apart. Loader support is the "Who loads what"
table; a file loads in a UI only when every algorithm in it does.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import UserError

UIS = ("A1111", "Forge", "ComfyUI", "diffusers")
Y, N = "yes", "no"
# algorithm -> support in A1111, Forge, ComfyUI, diffusers 0.42 (adapter-format.md)
LOADERS: dict[str, tuple[str, str, str, str]] = {
    "lora": (Y, Y, Y, Y),
    "locon": (Y, Y, Y, Y),
    "locon-tucker": (Y, Y, Y, N),
    "loha": (Y, Y, Y, N),
    "lokr": (Y, Y, Y, N),
    "ia3": (Y, N, N, N),
    "dylora": (Y, Y, Y, Y),
    "full": (Y, Y, Y, N),
    "glora": (N, "partial", Y, N),
    "diag-oft": ("broken with constraint 0", N, "partial", N),
    "boft": (N, N, Y, N),
}
EXPERIMENTAL = {"glora", "diag-oft", "boft"}
SCALAR_TENSORS = ("alpha", "on_input")


@dataclass
class ModuleInfo:
    name: str
    algo: str
    dim: Optional[int]  # None: no rank (iA3, full, full-matrix LoKr, OFT)
    alpha: Optional[float]
    params: int
    note: str = ""  # iA3: which side it scales


@dataclass
class Report:
    path: str
    file_size: int
    modules: list[ModuleInfo]
    metadata: dict[str, str]
    unknown_keys: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        return sum(m.params for m in self.modules)

    def algorithms(self) -> Counter:
        return Counter(m.algo for m in self.modules)

    def loaders(self) -> dict[str, str]:
        """UI -> 'yes' / 'no' / a qualified answer, for the whole file."""
        out = {}
        for i, ui in enumerate(UIS):
            answers = {LOADERS[a][i] if a in LOADERS else "unknown" for a in self.algorithms()}
            if answers == {Y}:
                out[ui] = Y
            elif N in answers:
                out[ui] = N
            else:
                out[ui] = ", ".join(sorted(answers - {Y}))
        return out


def _shape(t) -> tuple[int, ...]:
    return tuple(t.shape)


def classify(tensors: dict[str, Any]) -> tuple[str, Optional[int]]:
    """(algorithm, rank) of one module from its tensors (names without the module prefix)."""
    keys = set(tensors)
    if "lora_down.weight" in keys and "lora_up.weight" in keys:
        down = tensors["lora_down.weight"]
        dim = _shape(down)[0]
        if "lora_mid.weight" in keys:
            return "locon-tucker", dim
        if len(_shape(down)) == 4 and _shape(down)[2:] != (1, 1):
            return "locon", dim
        return "lora", dim
    if "hada_w1_a" in keys:
        return "loha", _shape(tensors["hada_w1_b"])[0] if "hada_w1_b" in keys else None
    if "lokr_w1" in keys or "lokr_w1_a" in keys:
        for k in ("lokr_w1_b", "lokr_w2_b"):
            if k in keys:
                return "lokr", _shape(tensors[k])[0]
        return "lokr", None
    if "diff" in keys:
        return "full", None
    if "weight" in keys and ("on_input" in keys or len(_shape(tensors["weight"])) in (1, 4)):
        return "ia3", None
    if "a1.weight" in keys and "b1.weight" in keys:
        return "glora", _shape(tensors["a2.weight"])[0] if "a2.weight" in keys else None
    if "oft_blocks" in keys:
        return ("boft" if len(_shape(tensors["oft_blocks"])) == 4 else "diag-oft"), None
    if "w_norm" in keys:  # LyCORIS train_norm: offsets of a LayerNorm / GroupNorm
        return "norm", None
    return "unknown", None


def inspect_file(path: str | os.PathLike) -> Report:
    """Read `path` and describe it; UserError (exit 2) when it is not an adapter file."""
    from .adapters.file import read_adapter_file

    tensors, metadata = read_adapter_file(path)
    by_module: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        name, dot, sub = key.partition(".")
        if dot and name.startswith(("lora_unet_", "lora_te", "lycoris_")):
            by_module.setdefault(name, {})[sub] = t
    dylora = (metadata.get("ss_network_module") == "networks.dylora"
              or _network_args(metadata).get("algo") == "dylora")
    modules, unknown = [], []
    for name, ts in by_module.items():
        algo, dim = classify(ts)
        if algo == "unknown":
            unknown.extend(f"{name}.{k}" for k in ts)
            continue
        if dylora and algo in ("lora", "locon"):
            algo = "dylora"
        alpha = float(ts["alpha"].float().item()) if "alpha" in ts and algo not in ("ia3", "full") else None
        if alpha is None and dim is not None:
            alpha = float(dim)  # the loaders' rule: no alpha -> scale 1
        params = sum(t.numel() for k, t in ts.items() if k not in SCALAR_TENSORS)
        note = ""
        if algo == "ia3":
            note = "inputs" if "on_input" in ts and bool(ts["on_input"].item()) else "outputs"
        modules.append(ModuleInfo(name, algo, dim, alpha, params, note))
    if not modules:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
        if any("lora_A" in k or ".lora.down." in k or "lora_linear_layer" in k for k in tensors):
            raise UserError("a diffusers/peft-format LoRA (lora_A/lora_B keys), not a kohya/LyCORIS file",
                            file=str(path), fix="lorakit inspect reads kohya/LyCORIS adapter files")
        raise UserError(f"not a LoRA/LyCORIS adapter file: no adapter tensors ({len(tensors)} tensors, e.g. {sample})",
                        file=str(path), fix="give a kohya/LyCORIS adapter .safetensors (keys like "
                        "lora_unet_..._to_q.lora_down.weight); a full checkpoint is not an adapter")
    return Report(str(path), os.path.getsize(path), modules, metadata, sorted(unknown))


def _network_args(md: dict[str, str]) -> dict[str, Any]:
    try:
        v = json.loads(md.get("ss_network_args") or "{}")
        return v if isinstance(v, dict) else {}
    except ValueError:
        return {}


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _part(name: str) -> str:
    return "UNet" if name.startswith("lora_unet_") else "text encoder"


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else (str(int(v)) if float(v).is_integer() else f"{v:g}")


def format_report(r: Report) -> str:
    lines = [f"file:        {r.path}", f"size:        {r.file_size:,} bytes ({_size(r.file_size)})"]
    algos = r.algorithms()
    lines.append("algorithm:   " + ", ".join(f"{a} ({n} modules)" for a, n in sorted(algos.items())))
    parts = Counter(_part(m.name) for m in r.modules)
    lines.append(f"modules:     {len(r.modules)} (" + ", ".join(f"{p} {n}" for p, n in sorted(parts.items()))
                 + ")")
    lines.append(f"parameters:  {r.params:,}")
    dist = Counter((_part(m.name), m.algo, m.dim, m.alpha, m.note) for m in r.modules)
    lines.append("dim / alpha:")
    for (part, algo, dim, alpha, note), n in sorted(dist.items(), key=lambda kv: (
            kv[0][0], kv[0][1], kv[0][2] or 0, kv[0][3] or 0, kv[0][4])):
        what = (f"dim {_fmt(dim)}, alpha {_fmt(alpha)}, scale {_fmt(alpha / dim)}" if dim else
                f"no rank (scales {note} per channel)" if algo == "ia3" else
                "full-matrix factors" if algo == "lokr" else "no rank (full matrices)")
        lines.append(f"  {part:12s} {algo:12s} {what}: {n} modules")
    te = [m.name for m in r.modules if m.name.startswith("lora_te_") and not m.name.startswith("lora_te_text_model_")]
    if te:
        lines.append(f"warning: {len(te)} text-encoder modules are named lora_te_<...> without text_model_ "
                     "(A1111 and ComfyUI skip them)")
    if r.unknown_keys:
        lines.append(f"warning: {len(r.unknown_keys)} tensors of no known algorithm, e.g. {r.unknown_keys[0]}")
    lines += ["", "metadata:"] + _metadata_lines(r.metadata)
    lines += ["", "loads in:"]
    for ui, ans in r.loaders().items():
        lines.append(f"  {ui:10s} {ans}")
    if "ia3" in algos:
        lines.append("  note: iA3 files load only in A1111 (not Forge, ComfyUI or diffusers)")
    exp = sorted(EXPERIMENTAL & set(algos))
    if exp:
        lines.append(f"  note: {', '.join(exp)} support in the UIs is experimental")
    if "locon-tucker" in algos:
        lines.append("  note: Tucker (lora_mid) convs do not load in diffusers")
    return "\n".join(lines)


def _metadata_lines(md: dict[str, str]) -> list[str]:
    if not md:
        return ["  (none)"]

    def get(*keys: str) -> Optional[str]:
        for k in keys:
            if md.get(k) not in (None, "", "None"):
                return md[k]
        return None

    rows = [("output name", get("ss_output_name")),
            ("base model", get("ss_sd_model_name")),
            ("base version", get("ss_base_model_version") or ("sd_v2" if get("ss_v2") == "True" else None)),
            ("network", get("ss_network_module")),
            ("network dim/alpha", "/".join(x for x in (get("ss_network_dim"), get("ss_network_alpha")) if x)
             or None),
            ("network args", get("ss_network_args")),
            ("steps", get("ss_steps", "ss_max_train_steps")),
            ("epochs", "/".join(x for x in (get("ss_epoch"), get("ss_num_epochs")) if x) or None),
            ("optimizer", get("ss_optimizer")),
            ("learning rate", get("ss_learning_rate")),
            ("resolution", get("ss_resolution")),
            ("training images", get("ss_num_train_images")),
            ("sshs hashes", ", ".join(k for k in ("sshs_model_hash", "sshs_legacy_hash") if k in md) or "absent")]
    out = [f"  {k:18s} {v}" for k, v in rows if v is not None]
    out.append(f"  ({len(md)} keys; ss_tag_frequency {'present' if 'ss_tag_frequency' in md else 'absent'})")
    return out


def run(path: str | os.PathLike) -> str:
    return format_report(inspect_file(path))
