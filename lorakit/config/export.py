"""A validated config written back out: as lorakit TOML (`lorakit train` reads it) or as a kohya_ss GUI
JSON (today's GUI loads it; lorakit imports it to the same config). `lorakit config show --as`."""
from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ConfigError
from .kohya import LORA_TYPES, NETWORK_ARG_KEYS
from .kohya_keys import GUI_KEYS, SD_SCRIPTS_ARGS
from .schema import SECTIONS, TrainConfig, field_attr, field_section



def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML form for {v!r}")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def _values(cfg: TrainConfig) -> dict[str, Any]:
    """Every field's value, None written as its kohya spelling or left out (unset = the default)."""
    out: dict[str, Any] = {}
    for name, value in cfg.model_dump().items():
        if value is None:
            if TrainConfig.model_fields[name].default is not None:
                out[name] = field_attr(name, "kohya_none")  # alpha 0 means alpha = dim
            continue
        out[name] = value
    return out


def to_toml(cfg: TrainConfig) -> str:
    """lorakit TOML, one [section] per schema section, every key (defaults included, so it documents)."""
    values = _values(cfg)
    lines: list[str] = []
    for section in SECTIONS:
        keys = [k for k in values if field_section(k) == section and k != "dataset_subsets"]
        if keys:
            lines.append(f"[{section}]")
            lines += [f"{k} = {_toml_value(values[k])}" for k in keys]
            lines.append("")
    for sub in values.get("dataset_subsets", []):
        lines.append("[[dataset_subsets]]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in sub.items()]
        lines.append("")
    return "\n".join(lines)


def _lora_type(cfg: TrainConfig) -> str:
    if cfg.network_type == "lora":
        return "Kohya LoCon" if cfg.conv_dim else "Standard"
    for name, (ntype, _) in LORA_TYPES.items():
        if ntype == cfg.network_type and name.startswith("LyCORIS/"):
            return name
    raise ConfigError(f"network_type '{cfg.network_type}' has no kohya_ss GUI LoRA_type", key="network_type",
                      fix="write it as lorakit TOML (--as toml)")


def _kv_text(d: dict[str, Any]) -> str:
    def val(v: Any) -> str:
        return ",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
    return " ".join(f'"{k}={val(v)}"' for k, v in d.items())


def to_kohya_json(cfg: TrainConfig) -> str:
    """A kohya_ss GUI JSON of the GUI's own keys; settings the GUI has no field for go into
    additional_parameters as the sd-scripts flags they are. lorakit-only settings must be at their
    default (the GUI could not pass them): otherwise a ConfigError names them."""
    values, defaults = _values(cfg), {k: f.default for k, f in TrainConfig.model_fields.items()}
    for name, value in cfg.model_dump().items():  # unset: the GUI's "not set" (0 or blank), not its default
        # sdxl unset (detected from the weights) has no GUI spelling: left out, it reads back as unset
        if value is None and name in GUI_KEYS and name not in values and name != "sdxl":
            values[name] = "" if "str" in str(TrainConfig.model_fields[name].annotation) else 0
    out: dict[str, Any] = {"LoRA_type": _lora_type(cfg)}
    uses = LORA_TYPES[out["LoRA_type"]][1]
    args = dict(cfg.network_args)
    for gui_key, arg in NETWORK_ARG_KEYS.items():
        if arg in args and gui_key in uses and gui_key != "use_cp":
            out[gui_key] = args.pop(arg)
    renamed = {"resolution": "max_resolution", "max_train_epochs": "epoch", "optimizer_type": "optimizer",
               "network_preset": "LyCORIS_preset"}
    flags: list[str] = []
    problems: list[str] = []
    for name, value in values.items():
        gui = renamed.get(name, name)
        if name in ("network_type", "network_args", "torch_compile"):
            continue
        if name == "resolution":
            out[gui] = f"{value[0]},{value[1]}"
        elif name == "network_preset":
            if value != "kohya":
                out[gui] = value
        elif name == "lr_warmup_steps" and 0 < value < 1:
            out["lr_warmup"] = round(value * 100, 6)
        elif name == "dynamo_backend":
            out[gui] = value if cfg.torch_compile else "no"
        elif name == "torch_compile_mode":
            out["dynamo_mode"] = value
        elif name == "torch_compile_dynamic":
            out["dynamo_use_dynamic"] = value
        elif name in ("optimizer_args", "lr_scheduler_args"):
            if value:
                out[gui] = _kv_text(value)
        elif gui in GUI_KEYS:
            out[gui] = value
        elif name == "no_half_vae" and cfg.sdxl:
            out["sdxl_no_half_vae"] = value  # the GUI's SDXL checkbox (passed only with sdxl)
        elif value == defaults[name] or (name == "cache_text_encoder_outputs" and value is None):
            continue
        elif name in SD_SCRIPTS_ARGS:
            text = json.dumps(value) if isinstance(value, str) else value
            flags.append(f"--{name}" if value is True else f"--{name} {text}")
        else:
            problems.append(name)
    if problems:
        raise ConfigError(f"lorakit-only settings have no kohya_ss GUI form: {', '.join(problems)}",
                          key=problems[0], fix="write the config as lorakit TOML (--as toml)")
    if args:
        flags.append(f"--network_args {_kv_text(args)}")
    if cfg.multires_noise_iterations and cfg.noise_offset:
        raise ConfigError("noise_offset and multires_noise_iterations are both set; a GUI JSON has one of them "
                          "(noise_offset_type)", key="noise_offset_type", fix="write it as lorakit TOML (--as toml)")
    out["noise_offset_type"] = "Multires" if cfg.multires_noise_iterations else "Original"
    out["additional_parameters"] = " ".join(flags)
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n"
