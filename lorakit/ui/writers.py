"""Save a config from the UI: lorakit TOML or a kohya_ss GUI JSON, written by the same code as
`lorakit config show --as toml|kohya-json` (config/export.py). The saved file reads back to the same
TrainConfig (tests/test_ui_api.py)."""
from __future__ import annotations

from ..config.export import to_kohya_json, to_toml
from ..config.schema import TrainConfig
from ..errors import ConfigError

__all__ = ["render", "to_toml"]


def render(cfg: TrainConfig, fmt: str) -> str:
    if fmt == "toml":
        return to_toml(cfg)
    if fmt == "kohya":
        return to_kohya_json(cfg)
    raise ConfigError(f"unknown save format '{fmt}'", fix="use toml or kohya")
