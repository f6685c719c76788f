"""kohya_ss GUI JSON -> our schema.

GUI exports are loose JSON (trailing commas, numbers as strings such as "1.0",
"576,576", "31337"); they are accepted as written. Keys map onto TrainConfig;
GUI-only keys are listed as ignored with the reason; a key that is neither is an
error with a "did you mean".
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from .load import unknown_key_error
from .schema import TrainConfig, parse_kv_args

# GUI key -> schema key, where only the name differs.
RENAMED = {
    "max_resolution": "resolution",
    "epoch": "max_train_epochs",
    "optimizer": "optimizer_type",
    "lora_network_weights": "network_weights",
}

# Keys the GUI writes that do not change a LoRA run, with the reason.
GUI_ONLY = {
    "model_list": "GUI model picker; the path in pretrained_model_name_or_path is used",
    "no_token_padding": "DreamBooth script only; no effect on adapter training",
    "save_model_as": "lorakit writes .safetensors",
    "LyCORIS_preset": "module selection follows LoRA_type",
    "xformers": "lorakit always uses PyTorch SDPA attention",
    "mem_eff_attn": "lorakit always uses PyTorch SDPA attention",
    "save_last_n_steps": "retention is not implemented yet",
    "save_last_n_steps_state": "retention is not implemented yet",
    "use_wandb": "TensorBoard only",
    "wandb_api_key": "TensorBoard only",
}

# kohya settings lorakit does not implement yet: accepted only with a value that
# changes nothing, so that a config never trains differently from what it says.
NEUTRAL = {
    "noise_offset": 0, "adaptive_noise_scale": 0, "multires_noise_iterations": 0, "min_snr_gamma": 0,
    "caption_dropout_rate": 0, "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0,
    "color_aug": False, "flip_aug": False, "random_crop": False, "enable_bucket": False,
    "scale_weight_norms": 0, "lr_scheduler_num_cycles": "", "lr_scheduler_power": "",
    "noise_offset_type": "Original", "multires_noise_discount": None, "train_on_input": None,
    "additional_parameters": "", "lr_scheduler_type": "", "lr_scheduler_args": "",
}

LORA_TYPES = {
    "Standard": ("lora", False),
    "Kohya LoCon": ("lora", True),
    "LoCon": ("lora", True),
    "LyCORIS/LoCon": ("lora", True),
}


@dataclass
class ImportResult:
    values: dict[str, Any]
    ignored: list[tuple[str, str]] = field(default_factory=list)


def strip_trailing_commas(text: str) -> str:
    """Remove commas that directly precede '}' or ']' outside strings (loose GUI JSON)."""
    out: list[str] = []
    in_str = esc = False
    for i, c in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "," and text[i + 1:].lstrip()[:1] in ("}", "]"):
            continue
        out.append(c)
    return "".join(out)


def parse_optimizer_args(text: str) -> dict[str, Any]:
    tokens = shlex.split(text or "")
    if tokens and tokens[0] == "--optimizer_args":  # the 2023 GUI form
        tokens = tokens[1:]
    return parse_kv_args(tokens)


def _gui_number(key: str, value: Any) -> Any:
    """The GUI stores numbers as strings ("1.0", "31337"); convert them for non-text keys."""
    if not isinstance(value, str) or "str" in str(TrainConfig.model_fields[key].annotation):
        return value
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip() == "")


def import_kohya_json(path: Path) -> ImportResult:
    file = str(path)
    try:
        raw = json.loads(strip_trailing_commas(path.read_text(encoding="utf-8-sig")))
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e}", file=file, fix="check quotes and commas") from None
    if not isinstance(raw, dict):
        raise ConfigError("expected a JSON object of settings", file=file)
    res = ImportResult({})
    known = TrainConfig.model_fields
    handlers: dict[str, Callable[[Any], None]] = {
        "optimizer_args": lambda v: res.values.__setitem__("optimizer_args", parse_optimizer_args(v)),
        "lr_warmup": lambda v: res.values.__setitem__("lr_warmup_steps", float(v) / 100.0),
    }
    lora_type = raw.get("LoRA_type", "Standard")
    if lora_type not in LORA_TYPES:
        raise ConfigError(f"LoRA_type '{lora_type}' is not supported yet", file=file, key="LoRA_type",
                          fix=f"use one of {', '.join(LORA_TYPES)}")
    res.values["network_type"], with_conv = LORA_TYPES[lora_type]
    for key, value in raw.items():
        if key == "LoRA_type":
            continue
        if key in ("conv_dim", "conv_alpha") and not with_conv:
            res.ignored.append((key, f"LoRA_type '{lora_type}' adapts no 3x3 convs"))
            continue
        if key in GUI_ONLY:
            res.ignored.append((key, GUI_ONLY[key]))
        elif key in NEUTRAL:
            if not (_blank(value) or value == NEUTRAL[key] or value in (0, "0", False)
                    or NEUTRAL[key] is None):
                raise ConfigError(f"'{key}' = {value!r} is a kohya setting lorakit does not support yet",
                                  file=file, key=key, fix=f"remove it or set it to {NEUTRAL[key]!r}")
            res.ignored.append((key, "no effect at this value"))
        elif key in handlers:
            handlers[key](value)
        elif RENAMED.get(key, key) in known:
            if not _blank(value):
                name = RENAMED.get(key, key)
                res.values[name] = _gui_number(name, value)
        else:
            raise unknown_key_error(key, file, list(known) + list(GUI_ONLY) + list(RENAMED))
    if lora_type == "LyCORIS/LoCon":  # LyCORIS: conv_dim/alpha default to network_dim/alpha
        res.values.setdefault("conv_dim", res.values.get("network_dim", 8))
        res.values.setdefault("conv_alpha", res.values.get("network_alpha", 1))
    return res
