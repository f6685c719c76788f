"""`lorakit inspect FILE`: what an adapter file holds and which UIs load it.

Per module the algorithm is the file format its tensor names show, and the rank is read where the
loaders read it; both come from the adapter types' declarations (adapters/declare.py, through the
registry), as do the loaders' answers: a file loads in a UI only as well as its weakest format
does, and a conditional answer says its condition. DyLoRA files are LoRA files: only the metadata
(networks.dylora / algo dylora) tells them apart. docs/adapters.md has the table.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .adapters import registry
from .adapters.declare import LOADERS, NO, YES, FileContext, FileFormat
from .errors import UserError

UIS = LOADERS
SCALAR_TENSORS = ("alpha", "on_input")
MODULE_PREFIXES = ("lora_unet_", "lora_te", "lycoris_")


@dataclass
class ModuleInfo:
    name: str
    algo: str
    dim: Optional[int]  # None: no rank (iA3, full, full-matrix LoKr, OFT)
    alpha: Optional[float]  # None where there is no rank
    params: int
    note: str = ""  # what a module without rank is (its format's words)


@dataclass
class Report:
    path: str
    file_size: int
    modules: list[ModuleInfo]
    metadata: dict[str, str]
    unknown_keys: list[str] = field(default_factory=list)
    formats: dict[str, FileFormat] = field(default_factory=dict)  # module name -> its format
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # module name -> its tensors

    @property
    def params(self) -> int:
        return sum(m.params for m in self.modules)

    def algorithms(self) -> Counter:
        return Counter(m.algo for m in self.modules)

    def family(self) -> tuple[str, str]:
        """(SDXL / SD2.x / SD1.x, how that is known): declare.FileContext.family over every module."""
        return FileContext(self.tensors, self.metadata).family()

    def format_set(self) -> list[FileFormat]:
        return list({f.name: f for f in self.formats.values()}.values())

    def loaders(self) -> dict[str, str]:
        """UI -> "yes", "no (why)" or the conditions it loads the file under, for the whole file."""
        out = {}
        for ui in UIS:
            answers = []
            for fmt in self.format_set():
                mods = {n: self.tensors[n] for n, f in self.formats.items() if f is fmt}
                answers.append(fmt.support(ui, FileContext(mods, self.metadata)))
            refused = [a for a in answers if a.answer == NO]
            if refused:
                whys = sorted({a.why for a in refused if a.why})
                out[ui] = NO + (f" ({'; '.join(whys)})" if whys else "")
            elif all(a.answer == YES for a in answers):
                out[ui] = YES
            else:
                out[ui] = "; ".join(sorted({str(a) for a in answers if a.answer != YES}))
        return out


def classify(tensors: dict[str, Any]) -> tuple[str, Optional[int]]:
    """(algorithm, rank) of one module from its tensors (names without the module prefix)."""
    fmt = registry.classify(tensors)
    return ("unknown", None) if fmt is None else (fmt.name, fmt.rank(tensors))


def _not_a_file(path: Path) -> UserError:
    if not path.is_dir():
        return UserError("adapter file not found", file=str(path), fix="check the path")
    files = sorted(p.name for p in path.iterdir() if p.suffix.lower() == ".safetensors" and p.is_file())
    if not files:
        return UserError("a folder, not an adapter file; it holds no .safetensors files", file=str(path),
                         fix="give the path of one adapter .safetensors file")
    shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    return UserError(f"a folder, not an adapter file; it holds {len(files)} .safetensors files: {shown}",
                     file=str(path), fix=f"give one of them, e.g. lorakit inspect {path / files[0]}")


def inspect_file(path: str | os.PathLike) -> Report:
    """Read `path` and describe it; UserError (exit 2) when it is not an adapter file."""
    from .adapters.file import read_adapter_file

    if not Path(path).is_file():
        raise _not_a_file(Path(path))
    tensors, metadata = read_adapter_file(path)
    by_module: dict[str, dict[str, Any]] = {}
    for key, t in tensors.items():
        name, dot, sub = key.partition(".")
        if dot and name.startswith(MODULE_PREFIXES):
            by_module.setdefault(name, {})[sub] = t
    modules, unknown, formats = [], [], {}
    for name, ts in by_module.items():
        fmt = registry.classify(ts)
        if fmt is None:
            unknown.extend(f"{name}.{k}" for k in ts)
            continue
        formats[name] = fmt
        dim = fmt.rank(ts)
        alpha = None
        if dim is not None:  # the loaders' rule: no alpha -> alpha = rank, scale 1
            alpha = float(ts["alpha"].float().item()) if "alpha" in ts else float(dim)
        params = sum(t.numel() for k, t in ts.items() if k not in SCALAR_TENSORS)
        note = "" if dim is not None else fmt.rankless(ts)
        modules.append(ModuleInfo(name, registry.label(fmt, metadata), dim, alpha, params, note))
    if not modules:
        sample = ", ".join(sorted(tensors)[:3]) or "no tensors"
        if any("lora_A" in k or ".lora.down." in k or "lora_linear_layer" in k for k in tensors):
            raise UserError("a diffusers/peft-format LoRA (lora_A/lora_B keys), not a kohya/LyCORIS file",
                            file=str(path), fix="lorakit inspect reads kohya/LyCORIS adapter files")
        raise UserError(f"not a LoRA/LyCORIS adapter file: no adapter tensors ({len(tensors)} tensors, e.g. {sample})",
                        file=str(path), fix="give a kohya/LyCORIS adapter .safetensors (keys like "
                        "lora_unet_..._to_q.lora_down.weight); a full checkpoint is not an adapter")
    return Report(str(path), os.path.getsize(path), modules, metadata, sorted(unknown), formats,
                  {n: by_module[n] for n in formats})


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _part(name: str) -> str:
    if name.startswith("lora_unet_"):
        return "UNet"
    return {"lora_te1_": "text encoder 1", "lora_te2_": "text encoder 2"}.get(name[:9], "text encoder")


def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else (str(int(v)) if float(v).is_integer() else f"{v:g}")


def format_report(r: Report) -> str:
    family, known = r.family()
    lines = [f"file:        {r.path}", f"size:        {r.file_size:,} bytes ({_size(r.file_size)})",
             f"model:       {family} ({known})"]
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
        what = f"dim {_fmt(dim)}, alpha {_fmt(alpha)}, scale {_fmt(alpha / dim)}" if dim else note
        lines.append(f"  {part:14s} {algo:12s} {what}: {n} modules")
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
    formats = r.format_set()
    if family == "SDXL":
        lines.append("  note: an SDXL adapter: the UIs apply it to SDXL-family checkpoints (SDXL, Pony, Illustrious, "
                     "NoobAI); on an SD1.x/2.x checkpoint they skip its modules")
    for note in dict.fromkeys(n for f in formats for n in f.notes):
        lines.append(f"  note: {note}")
    exp = sorted(f.name for f in formats if f.experimental)
    if exp:
        lines.append(f"  note: {', '.join(exp)} support in the UIs is experimental")
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
