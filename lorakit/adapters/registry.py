"""Adapter algorithms by name: one module per algorithm registers itself here."""
from __future__ import annotations

from typing import Callable

from ..errors import ConfigError

_ALGORITHMS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        _ALGORITHMS[name] = cls
        cls.algo = name
        return cls
    return deco


def available() -> list[str]:
    _load_builtin()
    return sorted(_ALGORITHMS)


def get_algorithm(name: str) -> type:
    _load_builtin()
    key = name.lower()
    if key not in _ALGORITHMS:
        raise ConfigError(f"unknown adapter type '{name}'", key="network_type",
                          fix=f"use one of: {', '.join(sorted(_ALGORITHMS))}")
    return _ALGORITHMS[key]


def _load_builtin() -> None:
    from . import lora  # noqa: F401  (registers lora)
