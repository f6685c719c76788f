"""Save a config from the UI: lorakit TOML or a kohya_ss GUI JSON.

Both are checked by reading them back with lorakit's own readers (tests/test_ui_api.py):
the saved file must give the same TrainConfig. The JSON uses the GUI's key names where the
GUI has its own (LoRA_type, max_resolution, epoch, optimizer, lr_warmup as a percent is not
used: lr_warmup_steps is a key the GUI passes through) and the schema's names elsewhere,
which the GUI keeps and passes on to sd-scripts.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

from ..config.kohya import LORA_TYPES
from ..config.schema import SECTIONS, TrainConfig, field_section
from ..errors import ConfigError

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# schema key -> the kohya_ss GUI's own name for it (the importer maps these back)
GUI_NAMES = {"resolution": "max_resolution", "max_train_epochs": "epoch", "optimizer_type": "optimizer",
             "network_weights": "lora_network_weights"}


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items() if x is not None) + " }"
    raise ConfigError(f"cannot write {type(v).__name__} value {v!r} to TOML")


def toml_key(k: str) -> str:
    return k if BARE_KEY.match(k) else json.dumps(k)


def to_toml(cfg: TrainConfig) -> str:
    """The settings that differ from the defaults, in [section] tables."""
    data = cfg.model_dump(mode="json", exclude_defaults=True)
    out = ["# lorakit config (written by lorakit ui); `lorakit config keys` explains every key"]
    for section in SECTIONS:
        keys = [k for k in data if field_section(k) == section and data[k] is not None]
        if keys:
            out += ["", f"[{section}]"] + [f"{k} = {toml_value(data[k])}" for k in keys]
    return "\n".join(out) + "\n"


def _lora_type(cfg: TrainConfig) -> str:
    if cfg.network_type == "lora":
        return "Kohya LoCon" if cfg.conv_dim else "Standard"
    for gui, (network_type, _) in LORA_TYPES.items():
        if network_type == cfg.network_type and gui.startswith("LyCORIS/"):
            return gui
    raise ConfigError(f"network_type '{cfg.network_type}' has no kohya_ss GUI LoRA_type", key="network_type",
                      fix="save as lorakit TOML")


def _kv(key: str, args: dict[str, Any]) -> str:
    """kohya's 'k=v k=v' text; each value as a Python literal without spaces (the GUI splits on them)."""
    items = []
    for k, v in args.items():
        text = ",".join(repr(x) for x in v) if isinstance(v, tuple) else repr(v).replace(", ", ",")
        if " " in text:
            raise ConfigError(f"{key}: {k}={text} has a space, which the GUI's text field cannot keep", key=key,
                              fix="save as lorakit TOML")
        items.append(f"{k}={text}")
    return " ".join(items)


def to_kohya_json(cfg: TrainConfig) -> str:
    """A kohya_ss GUI JSON of every setting (the GUI loads it; lorakit reads it back the same)."""
    data = cfg.model_dump(mode="json")
    out: dict[str, Any] = {"LoRA_type": _lora_type(cfg)}
    out["noise_offset_type"] = "Multires" if cfg.multires_noise_iterations else "Original"
    # the GUI's accelerate dynamo settings: backend "no" = off
    out["dynamo_backend"] = cfg.dynamo_backend if cfg.torch_compile else "no"
    out["dynamo_mode"] = cfg.torch_compile_mode or "default"
    if cfg.lr_scheduler_args:  # no GUI field: passed on as sd-scripts' command line
        out["additional_parameters"] = "--lr_scheduler_args " + _kv("lr_scheduler_args", cfg.lr_scheduler_args)
    for k, v in data.items():
        if k in ("network_type", "save_model_as", "torch_compile", "dynamo_backend", "torch_compile_mode",
                 "lr_scheduler_args"):
            continue
        if k == "resolution":
            v = f"{v[0]},{v[1]}"
        elif k in ("optimizer_args", "network_args"):
            v = _kv(k, cfg.optimizer_args if k == "optimizer_args" else cfg.network_args)
        elif k == "dataset_subsets" and v:
            raise ConfigError("dataset_subsets has no kohya_ss GUI field", key=k, fix="save as lorakit TOML")
        out[GUI_NAMES.get(k, k)] = "" if v is None else v
    if "conv" in _network_uses(out["LoRA_type"]) and cfg.conv_dim is None and out["LoRA_type"].startswith("LyCORIS"):
        raise ConfigError("the GUI gives LyCORIS types conv_dim = network_dim when it is empty", key="conv_dim",
                          fix="set conv_dim (and conv_alpha), or save as lorakit TOML")
    return json.dumps(out, indent=2) + "\n"


def _network_uses(lora_type: str) -> tuple[str, ...]:
    return LORA_TYPES[lora_type][1]


def render(cfg: TrainConfig, fmt: str) -> str:
    if fmt == "toml":
        return to_toml(cfg)
    if fmt == "kohya":
        return to_kohya_json(cfg)
    raise ConfigError(f"unknown save format '{fmt}'", fix="use toml or kohya")
