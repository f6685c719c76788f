"""Adapter algorithms by name: `network_type` -> the AdapterModule subclass.

One file per algorithm registers its module class with ``@register("name")``
(as peft registers one tuner per method) and is listed in ALGORITHM_MODULES so
that it is imported on the first lookup. Names are case-insensitive; a name is
registered once.
"""
from __future__ import annotations

import importlib
from typing import Callable, TypeVar

from ..errors import ConfigError

T = TypeVar("T", bound=type)

ALGORITHM_MODULES = ("lora", "ia3", "dylora", "full", "glora", "loha", "lokr", "oft", "boft")

_ALGORITHMS: dict[str, type] = {}
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


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        for mod in ALGORITHM_MODULES:
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
        raise ConfigError(f"unknown network_type '{name}'", key="network_type",
                          fix="use one of: " + ", ".join(sorted(_ALGORITHMS)))
    return _ALGORITHMS[key]
