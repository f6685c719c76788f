"""Load a config file (our TOML or a kohya_ss JSON), apply overrides, validate.

Every problem becomes a ConfigError that names the file, the key and the fix.
"""
from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from ..errors import ConfigError
from .schema import SECTIONS, TrainConfig


def suggest(key: str, known: Iterable[str]) -> str | None:
    """Closest known key, for a "did you mean"."""
    matches = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_key_error(key: str, file: str | None, known: Iterable[str]) -> ConfigError:
    guess = suggest(key, known)
    fix = f"did you mean '{guess}'?" if guess else "remove it; `lorakit config keys` lists every key"
    return ConfigError(f"unknown key '{key}'", file=file, key=key, fix=fix)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", file=str(path),
                          fix="check quotes, '=' signs and [section] headers") from None


def read_toml(path: Path) -> dict[str, Any]:
    raw = _load_toml(path)
    flat: dict[str, Any] = {}
    for k, v in raw.items():
        if isinstance(v, dict) and k in SECTIONS:
            for k2, v2 in v.items():  # [section] tables only group keys
                if k2 in flat:
                    raise ConfigError(f"key '{k2}' is set twice", file=str(path), key=k2,
                                      fix="keep one of the two settings")
                flat[k2] = v2
        elif isinstance(v, dict) and k not in TrainConfig.model_fields:
            raise ConfigError(f"unknown section [{k}]", file=str(path), key=k,
                              fix=f"use one of {', '.join(SECTIONS)} or write the keys at top level")
        else:
            if k in flat:
                raise ConfigError(f"key '{k}' is set twice", file=str(path), key=k,
                                  fix="keep one of the two settings")
            flat[k] = v
    return flat


def parse_override(item: str) -> tuple[str, Any]:
    """`KEY=VALUE` from --set; VALUE is read as a TOML value, else as a plain string."""
    if "=" not in item:
        raise ConfigError(f"--set '{item}' is not KEY=VALUE", key=item, fix="write e.g. --set max_train_steps=100")
    key, text = item.split("=", 1)
    key, text = key.strip(), text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key, value


def build_config(values: dict[str, Any], file: str | None) -> TrainConfig:
    known = TrainConfig.model_fields
    for k in values:
        if k not in known:
            raise unknown_key_error(k, file, known)
    try:
        return TrainConfig(**values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or None
        field = known.get(key) if key else None
        fix = field.description if field and field.description else "see `lorakit config keys`"
        got = err.get("input")
        msg = err["msg"] + ("" if isinstance(got, dict) else f" (got {got!r})")
        raise ConfigError(msg, file=file, key=key, fix=fix) from None


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                cli_values: dict[str, Any] | None = None, fmt: str | None = None) -> TrainConfig:
    """Read `path` (.toml or kohya_ss .json), then --model/--data style values, then --set items.

    A .toml that looks like an sd-scripts --config_file (sdscripts.looks_like_sdscripts), or any
    .toml with fmt="sd-scripts", is read by the sd-scripts importer."""
    from .sdscripts import import_sdscripts_toml, looks_like_sdscripts
    values: dict[str, Any] = {}
    file = None
    if path is not None:
        p = Path(path)
        file = str(p)
        if not p.is_file():
            raise ConfigError("config file not found", file=file, fix="check the path")
        suffix = p.suffix.lower()
        if fmt not in (None, "lorakit", "sd-scripts", "kohya-gui"):
            raise ConfigError(f"unknown config format '{fmt}'", file=file, fix="use lorakit, sd-scripts or kohya-gui")
        if suffix == ".toml" and fmt != "kohya-gui":
            raw = _load_toml(p)
            if fmt == "sd-scripts" or fmt is None and looks_like_sdscripts(raw):
                values = import_sdscripts_toml(p, raw).values
            else:
                values = read_toml(p)
        elif suffix == ".json":
            from .kohya import import_kohya_json
            values = import_kohya_json(p).values
        else:
            raise ConfigError(f"unknown config type '{suffix}'", file=file,
                              fix="use a .toml file (lorakit) or a .json file (kohya_ss GUI)")
    for k, v in (cli_values or {}).items():
        if v is not None:
            values[k] = v
    for item in overrides or []:
        k, v = parse_override(item)
        if k not in TrainConfig.model_fields:
            raise unknown_key_error(k, "--set", TrainConfig.model_fields)
        values[k] = v
    return build_config(values, file)
