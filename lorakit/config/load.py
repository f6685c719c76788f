"""Load a config file (our TOML, an sd-scripts TOML or a kohya_ss JSON), apply overrides, validate.

Every problem becomes a ConfigError that names the file, the key and the fix.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable, Literal, get_args, get_origin

from pydantic import ValidationError

from ..adapters.base import validate_network_args
from ..adapters.registry import get_algorithm
from ..errors import ConfigError, closest
from ..optim.optimizers import unknown_optimizer
from ..optim.schedulers import unknown_scheduler_type
from ..sample.samplers import canonical
from .kohya import import_kohya_json, strip_trailing_commas
from .kohya_keys import ImportResult, Problems, suggest
from .schema import SECTIONS, TrainConfig
from .sdscripts import import_sdscripts_toml, looks_like_sdscripts, sdscripts_only_keys


def _unknown_key(key: str, known: Iterable[str]) -> tuple[str, str]:
    guess = suggest(key, known)
    return f"unknown key '{key}'", (f"did you mean '{guess}'?" if guess else
                                    "remove it; `lorakit config keys` lists every key")


def unknown_key_error(key: str, file: str | None, known: Iterable[str]) -> ConfigError:
    message, fix = _unknown_key(key, known)
    return ConfigError(message, file=file, key=key, fix=fix)


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", file=str(path),
                          fix="check quotes, '=' signs and [section] headers") from None


def read_toml(path: Path, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    raw = _load_toml(path) if raw is None else raw
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
                              fix=f"use one of {', '.join(SECTIONS)} or write the keys at top level "
                                  "(an sd-scripts --config_file: pass --format sd-scripts)")
        else:
            if k in flat:
                raise ConfigError(f"key '{k}' is set twice", file=str(path), key=k,
                                  fix="keep one of the two settings")
            flat[k] = v
    return flat


def _check_utf8(p: Path) -> None:
    try:
        p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})", file=str(p),
                          fix="give a text config (TOML or kohya_ss JSON) saved as UTF-8") from None


def read_config_file(p: Path, fmt: str | None = None) -> ImportResult:
    """Config file `p` read as `fmt` (see load_config): its schema values, the keys ignored with the
    reason, and (kohya JSON) the problems found, to be raised with the schema's own (build_config)."""
    file = str(p)
    fmt = {None: "auto", "kohya-gui": "kohya"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown config format '{fmt}'", file=file, fix=f"use one of {', '.join(FORMATS)}")
    _check_utf8(p)
    suffix = p.suffix.lower()
    if fmt == "auto":
        if suffix == ".json":
            return import_kohya_json(p, raise_problems=False)
        if suffix != ".toml":
            raise ConfigError(f"unknown config type '{suffix}'", file=file,
                              fix="use a .toml file (lorakit or sd-scripts) or a .json file (kohya_ss GUI), "
                                  "or name the format with --format")
        raw = _load_toml(p)
        if looks_like_sdscripts(raw):
            return import_sdscripts_toml(p, raw)
        foreign = _sdscripts_key(raw)
        if foreign:  # read as lorakit TOML, but written for sd-scripts
            raise ConfigError(f"unknown key '{foreign}'", file=file, key=foreign,
                              fix=f"'{foreign}' is an sd-scripts setting: for an sd-scripts --config_file "
                                  "pass --format sd-scripts")
        return ImportResult(read_toml(p, raw))
    expected = FORMAT_NAMES[fmt]
    if fmt == "kohya":
        try:
            return import_kohya_json(p, raise_problems=False)
        except ConfigError as e:
            if "not valid JSON" not in e.message and "expected a JSON object" not in e.message:
                raise
            what = "the file is TOML" if _parses_as_toml(p) else e.message
            raise ConfigError(f"expected {expected} (--format kohya), but {what}", file=file,
                              fix="give the GUI's saved .json; for a TOML use --format lorakit / sd-scripts, "
                                  "or drop --format (auto)") from None
    raw = _load_toml_as(p, expected, fmt)
    if fmt == "sd-scripts":
        return import_sdscripts_toml(p, raw)
    marker = _sdscripts_key(raw)
    if marker or looks_like_sdscripts(raw):
        marker = marker or next(k for k in raw if isinstance(raw[k], dict) and k not in SECTIONS)
        raise ConfigError(f"expected {expected} (--format lorakit), but '{marker}' is sd-scripts'", file=file,
                          key=marker, fix="use --format sd-scripts (or drop --format: auto detects it)")
    return ImportResult(read_toml(p, raw))


def _sdscripts_key(raw: dict[str, Any]) -> str | None:
    """The first key of a TOML (one table level down included) that only sd-scripts has, or None."""
    return next((k for k in _all_keys(raw) if k in sdscripts_only_keys()), None)


def _all_keys(raw: dict[str, Any]) -> list[str]:
    """The keys of a TOML, one table level down included (both readers flatten one level)."""
    out: list[str] = []
    for k, v in raw.items():
        out.extend(v if isinstance(v, dict) else [k])
    return out


def _parses_as_json(p: Path) -> bool:
    import json

    try:
        json.loads(strip_trailing_commas(p.read_text(encoding="utf-8-sig")))
        return True
    except (ValueError, UnicodeDecodeError):
        return False


def _parses_as_toml(p: Path) -> bool:
    try:
        tomllib.loads(p.read_text(encoding="utf-8"))
        return True
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


def _load_toml_as(p: Path, expected: str, fmt: str) -> dict[str, Any]:
    try:
        return _load_toml(p)
    except ConfigError as e:
        hint = " (a kohya_ss GUI JSON: --format kohya)" if _parses_as_json(p) else ""
        raise ConfigError(f"expected {expected} (--format {fmt}), but the file is not TOML{hint}: {e.message}",
                          file=str(p), fix="give a .toml config, or drop --format (auto)") from None


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


def build_config(values: dict[str, Any], file: str | None, problems: Problems | None = None,
                 origins: dict[str, str] | None = None) -> TrainConfig:
    """The validated config; every problem (unknown keys, bad values, and those in `problems`) raised
    together as one ConfigError. origins: where a key's value came from when not the file (e.g.
    "--set KEY=VALUE"), named in its problem."""
    problems = problems if problems is not None else Problems(file)
    problems.file = file
    known = TrainConfig.model_fields
    origins = origins or {}
    for k in [k for k in values if k not in known]:
        problems.add(k, *_unknown_key(k, known), where=origins.get(k))
        values = {kk: v for kk, v in values.items() if kk != k}
    for e in name_problems(values):
        problems.add(e.key, e.message, e.fix or "", where=origins.get(e.key or ""))
    try:
        cfg = TrainConfig(**values)
    except ValidationError as e:
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or None
            field = known.get(key) if key else None
            got = err.get("input")
            msg = err["msg"] + ("" if isinstance(got, dict) else f" (got {got!r})")
            fix = (f"give {key} a valid value: {field.description[0].lower()}{field.description[1:]}"
                   if field and field.description else "see `lorakit config keys`")
            guess = closest(str(got), _choices(field.annotation)) if field and err["type"] == "literal_error" else None
            fix = f"did you mean {guess!r}? " + fix if guess else fix
            problems.add(key, msg, fix, where=origins.get(key.split(".")[0]) if key else None)
        problems.raise_all()
        raise AssertionError("unreachable: a ValidationError has errors")  # pragma: no cover
    problems.raise_all()
    return cfg


def name_problems(values: dict[str, Any]) -> list[ConfigError]:
    """The names among `values` that no optimizer, lr_scheduler_type, adapter type (and its
    network_args) or sampler has, each an error with a "did you mean" (the train preflight then
    checks that the optimizer's package is installed)."""
    out = []
    checks = [("optimizer_type", unknown_optimizer), ("lr_scheduler_type", unknown_scheduler_type),
              ("sample_sampler", _sampler_problem), ("network_type", _adapter_problem)]
    for key, check in checks:
        if isinstance(values.get(key), str):
            error = check(values[key]) if key != "network_type" else check(values[key], values.get("network_args"))
            if error is not None:
                out.append(error)
    return out


def _sampler_problem(name: str) -> ConfigError | None:
    try:
        canonical(name)
    except ConfigError as e:
        return e
    return None


def _adapter_problem(name: str, args: Any) -> ConfigError | None:
    try:
        algo = get_algorithm(name)
        if isinstance(args, dict):
            validate_network_args(algo, args)
    except ConfigError as e:
        return e
    return None


def _choices(annotation: Any) -> list[str]:
    """The allowed values of a Literal field (Optional[Literal[...]] included), as text."""
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return [c for a in get_args(annotation) for c in _choices(a)]


FORMATS = ("auto", "lorakit", "kohya", "sd-scripts")
FORMAT_NAMES = {"lorakit": "a lorakit TOML config", "kohya": "a kohya_ss GUI JSON config",
                "sd-scripts": "an sd-scripts --config_file TOML"}


@dataclass
class Loaded:
    """A validated config and the keys of its file that were ignored, with the reason."""
    cfg: TrainConfig
    ignored: list[tuple[str, str]]


def load(path: str | Path | None, overrides: list[str] | None = None, cli_values: dict[str, Any] | None = None,
         fmt: str | None = None) -> Loaded:
    """Read `path`, then --model/--data style values, then --set items.

    fmt (the CLI's --format): "auto"/None detects the reader -- .json: kohya_ss GUI; .toml: sd-scripts
    when it looks like one (sdscripts.looks_like_sdscripts), else lorakit. "lorakit", "kohya" or
    "sd-scripts" forces that reader whatever the file's suffix; a file that does not fit it is a
    ConfigError naming the file and what was expected."""
    res = ImportResult({})
    file = None
    if path is not None:
        file = str(path)
        if not Path(path).is_file():
            raise ConfigError("config file not found", file=file, fix="check the path")
        res = read_config_file(Path(path), fmt)
    values = dict(res.values)
    origins: dict[str, str] = {}
    for k, v in (cli_values or {}).items():
        if v is not None:
            values[k], origins[k] = v, "the command line"
    for item in overrides or []:
        k, v = parse_override(item)
        if k not in TrainConfig.model_fields:
            raise unknown_key_error(k, "--set", TrainConfig.model_fields)
        values[k], origins[k] = v, f"--set {item}"
    return Loaded(build_config(values, file, res.problems, origins), res.ignored)


def load_config(path: str | Path | None, overrides: list[str] | None = None,
                cli_values: dict[str, Any] | None = None, fmt: str | None = None) -> TrainConfig:
    """The validated config of `path` (see load); the ignored keys are dropped here."""
    return load(path, overrides, cli_values, fmt).cfg
