"""Adapter algorithms by name: `network_type` -> the AdapterModule subclass, and every lookup
answered from what the classes declare (declare.py): file formats, LyCORIS algo names, kohya_ss GUI
LoRA_types, sd-scripts network modules.

One file per algorithm registers its module class with ``@register("name")``
(as peft registers one tuner per method) and is listed in ALGORITHM_MODULES so
that it is imported on the first lookup. Names are case-insensitive; a name is
registered once. Adding a type: its file, its line here, its tests.
"""
from __future__ import annotations

import importlib
from typing import Callable, Optional, TypeVar

from ..errors import ConfigError, closest
from .declare import LYCORIS_MODULE, FileFormat, GuiLoraType, Tensors

T = TypeVar("T", bound=type)

ALGORITHM_MODULES = ("lora", "ia3", "dylora", "full", "glora", "loha", "lokr", "oft", "boft")
# modules that add file formats beside any algorithm (train_norm's norm offsets) without being one
COMPANION_MODULES = ("norm",)

_ALGORITHMS: dict[str, type] = {}
_COMPANION_FORMATS: list[FileFormat] = []
_loaded = False


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make `cls` the adapter module class for network_type `name`."""
    key = name.strip().lower()

    def deco(cls: T) -> T:
        if key in _ALGORITHMS and _ALGORITHMS[key] is not cls:
            raise ValueError(f"adapter algorithm '{key}' is already registered "
                             f"({_ALGORITHMS[key].__name__}; not {cls.__name__})")
        _ALGORITHMS[key] = cls
        if "algo" not in cls.__dict__:
            cls.algo = key  # type: ignore[attr-defined]
        return cls

    return deco


def register_format(fmt: FileFormat) -> FileFormat:
    """Declare a file format that no algorithm owns (a companion module's, e.g. train_norm's)."""
    if all(f.name != fmt.name for f in _COMPANION_FORMATS):
        _COMPANION_FORMATS.append(fmt)
    return fmt


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for mod in ALGORITHM_MODULES + COMPANION_MODULES:
            importlib.import_module(f"{__package__}.{mod}")
        _loaded = True


def available() -> list[str]:
    """The registered algorithm names, sorted."""
    _load_builtin()
    return sorted(_ALGORITHMS)


def get_algorithm(name: str) -> type:
    """The module class registered as `name`; ConfigError(key='network_type') if there is none."""
    _load_builtin()
    key = str(name).strip().lower()
    if key not in _ALGORITHMS:
        guess = closest(key, _ALGORITHMS)
        raise ConfigError(f"unknown network_type '{name}'", key="network_type",
                          fix=(f"did you mean '{guess}'? " if guess else "") + "use one of: "
                          + ", ".join(sorted(_ALGORITHMS)))
    return _ALGORITHMS[key]


def algorithms() -> list[type]:
    """The registered classes in registration order (ALGORITHM_MODULES, then each file's order)."""
    _load_builtin()
    return list(_ALGORITHMS.values())


# ---- names elsewhere ---------------------------------------------------------------------------
def by_lycoris_algo(algo: str) -> Optional[type]:
    """The class LyCORIS's ``algo=`` selects (lycoris.kohya's "lora" is LoCon); None if none."""
    key = str(algo).strip().lower()
    return next((c for c in algorithms() if key in c.lycoris_algos), None)


def lycoris_algos() -> dict[str, str]:
    """LyCORIS algo name -> network_type."""
    return {a: c.algo for c in algorithms() for a in c.lycoris_algos}


def by_gui_lora_type(lora_type: str) -> Optional[tuple[type, GuiLoraType]]:
    """(class, what the GUI passes) for a kohya_ss GUI LoRA_type; None if no class declares it."""
    return next(((c, c.gui_lora_types[lora_type]) for c in algorithms() if lora_type in c.gui_lora_types), None)


def gui_lora_types() -> dict[str, tuple[str, GuiLoraType]]:
    """kohya_ss GUI LoRA_type -> (network_type, what the GUI passes)."""
    return {t: (c.algo, g) for c in algorithms() for t, g in c.gui_lora_types.items()}


def network_modules() -> dict[str, Optional[str]]:
    """sd-scripts network_module -> network_type; lycoris.kohya -> None (its algo arg decides)."""
    out: dict[str, Optional[str]] = {}
    for c in algorithms():
        if c.network_module != LYCORIS_MODULE:
            out.setdefault(c.network_module, c.algo)
    out[LYCORIS_MODULE] = None
    return out


def by_metadata(metadata: dict[str, str]) -> Optional[type]:
    """The class a file's ss_network_module (and for lycoris.kohya its algo) names; None if none."""
    import json

    module = metadata.get("ss_network_module", "")
    if module == LYCORIS_MODULE:
        try:
            args = json.loads(metadata.get("ss_network_args") or "{}")
        except ValueError:
            return None
        return by_lycoris_algo(str(args.get("algo", "lora"))) if isinstance(args, dict) else None
    name = network_modules().get(module)
    return get_algorithm(name) if name else None


# ---- file formats ------------------------------------------------------------------------------
def file_formats() -> list[FileFormat]:
    """Every declared file format once, in registration order."""
    seen: dict[str, FileFormat] = {}
    for c in algorithms():
        for f in c.file_formats:
            seen.setdefault(f.name, f)
    for f in _COMPANION_FORMATS:
        seen.setdefault(f.name, f)
    return list(seen.values())


def classify(tensors: Tensors) -> Optional[FileFormat]:
    """The format of one module's tensors (names without the module prefix); None if no type has it."""
    return next((f for f in file_formats() if f.match(tensors)), None)


def builders(fmt: FileFormat) -> list[str]:
    """The network_types whose modules write (and so load) `fmt`, in registration order."""
    return [c.algo for c in algorithms() if fmt in c.file_formats]


def label(fmt: FileFormat, metadata: dict[str, str]) -> str:
    """The name of a module's algorithm: the format's, or the label of the type the metadata names
    when that type writes this format and only the metadata tells its files apart (DyLoRA)."""
    cls = by_metadata(metadata)
    if cls is not None and cls.metadata_label and fmt in cls.file_formats:
        return cls.metadata_label
    return fmt.name
