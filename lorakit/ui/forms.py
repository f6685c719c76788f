"""The set-up page's server side: the form from the schema, validation, plan and doctor.

The form is generated from TrainConfig (one schema owns every key), so a key a branch adds
shows up here with its help, default and range. Validation reports every problem at once,
each in the words the CLI uses (ConfigError.format()).
"""
from __future__ import annotations

import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError

from ..config.load import unknown_key_error
from ..config.schema import TrainConfig, field_section
from ..errors import ConfigError, UserError

# The groups people know from the kohya_ss GUI and the seed guides; a key goes to its schema
# section's group unless it is listed under scheduler or noise and loss.
GROUPS = (("model", "Model"), ("dataset", "Dataset"), ("network", "Network"), ("optimizer", "Optimizer"),
          ("scheduler", "Scheduler"), ("training", "Steps, batch and speed"), ("noise", "Noise and loss"),
          ("saving", "Saving"), ("sampling", "Sampling and watching"))
SECTION_GROUP = {"model": "model", "data": "dataset", "network": "network", "optimizer": "optimizer",
                 "training": "training", "output": "saving", "sample": "sampling"}
SCHEDULER_KEYS = ("lr_scheduler", "lr_scheduler_num_cycles", "lr_scheduler_power", "lr_scheduler_type",
                  "lr_scheduler_args", "lr_warmup_steps")
NOISE_KEYS = ("noise_offset", "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
              "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength", "min_timestep",
              "max_timestep", "zero_terminal_snr", "min_snr_gamma", "debiased_estimation_loss",
              "scale_v_pred_loss_like_noise_pred", "loss_type", "huber_schedule", "huber_c", "huber_scale")
BOUNDS = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}


def group_of(name: str) -> str:
    if name in SCHEDULER_KEYS:
        return "scheduler"
    if name in NOISE_KEYS:
        return "noise"
    return SECTION_GROUP.get(field_section(name), "training")


def _kind(annotation: Any) -> tuple[str, list[Any] | None]:
    """(input kind, choices) of a field's type: bool, choice, int, float, text, json."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        kind, choices = _kind(args[0])
        return kind, ([""] + choices if choices else choices)
    if origin is typing.Literal:
        return "choice", list(typing.get_args(annotation))
    if annotation is bool:
        return "bool", None
    if annotation in (int, float):
        return annotation.__name__, None
    if origin in (dict, list) or annotation in (dict, list):
        return "json", None
    return "text", None


def form_schema() -> dict[str, Any]:
    """Every field: name, group, kind, choices, default, range and help."""
    fields = []
    for name, f in TrainConfig.model_fields.items():
        kind, choices = _kind(f.annotation)
        bounds = [f"{BOUNDS[type(m)][0]} {getattr(m, BOUNDS[type(m)][1])}" for m in f.metadata if type(m) in BOUNDS]
        fields.append({"name": name, "group": group_of(name), "kind": kind, "choices": choices,
                       "default": to_form_value(name, f.default), "range": ", ".join(bounds),
                       "help": f.description or "", "optional": f.default is None})
    return {"groups": [{"id": g, "title": t} for g, t in GROUPS], "fields": fields}


def to_form_value(name: str, value: Any) -> Any:
    """A config value as the form shows it (resolution 'W,H', dicts and lists as JSON text)."""
    if value is None:
        return ""
    kind, _ = _kind(TrainConfig.model_fields[name].annotation) if name in TrainConfig.model_fields else ("", None)
    if name == "resolution" and isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if kind == "json":
        return json.dumps(value)
    return value


def form_values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: to_form_value(k, v) for k, v in values.items()}


def _from_form(name: str, value: Any) -> Any:
    if name in TrainConfig.model_fields and _kind(TrainConfig.model_fields[name].annotation)[0] == "json" \
            and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value  # the schema names the type it wanted
    return value


def parse_extra(text: str) -> tuple[dict[str, Any], list[str]]:
    """The 'more keys' box: TOML `key = value` lines, as `--set` takes them."""
    if not text.strip():
        return {}, []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return {}, [ConfigError(f"not valid TOML: {e}", file="more keys",
                                fix="one `key = value` per line; strings in quotes").format()]
    return raw, []


def collect(values: dict[str, Any], extra: str = "") -> tuple[dict[str, Any], list[dict[str, str | None]]]:
    """Form values + more keys -> (config values, problems). Empty fields take the default."""
    if not isinstance(values, dict):
        raise UserError("values must be a JSON object of config keys")
    out: dict[str, Any] = {}
    problems: list[dict[str, str | None]] = []
    known = TrainConfig.model_fields
    more, errs = parse_extra(extra)
    problems += [{"key": None, "message": m} for m in errs]
    for source, items in (("form", values), ("more keys", more)):
        for k, v in items.items():
            if k not in known:
                problems.append({"key": k, "message": unknown_key_error(k, source, known).format()})
            elif not (isinstance(v, str) and v.strip() == "" and known[k].annotation is not str):
                out[k] = _from_form(k, v)
    return out, problems


def validate(values: dict[str, Any], extra: str = "") -> tuple[TrainConfig | None, list[dict[str, str | None]]]:
    """The config, or None with every problem (all at once, the CLI's words)."""
    vals, problems = collect(values, extra)
    try:
        cfg = TrainConfig(**vals)
    except ValidationError as e:
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or None
            field = TrainConfig.model_fields.get(key.split(".")[0]) if key else None
            got = err.get("input")
            msg = err["msg"] + ("" if isinstance(got, dict) or key is None else f" (got {got!r})")
            fix = field.description if field is not None else "see `lorakit config keys`"
            problems.append({"key": key, "message": ConfigError(msg, key=key, fix=fix).format()})
        return None, problems
    return (None if problems else cfg), problems


def plan(cfg: TrainConfig) -> dict[str, Any]:
    """`lorakit plan` for the form: its lines and numbers, or the error that stops it."""
    from ..train.plan import plan_for_config

    if not cfg.train_data_dir and not cfg.dataset_subsets:
        return {"error": "set train_data_dir (a folder of <repeats>_<name> subfolders) to see the plan"}
    try:
        report = plan_for_config(cfg)
    except UserError as e:
        return {"error": e.format()}
    p = report.plan
    return {"lines": report.lines(cfg), "samples_per_epoch": p.samples_per_epoch,
            "batches_per_epoch": p.batches_per_epoch, "steps_per_epoch": p.steps_per_epoch,
            "total_steps": p.total_steps, "epochs": p.epochs, "warmup_steps": report.warmup_steps,
            "t_max": report.t_max_suggestion, "train_images": report.num_train_images, "warnings": report.warnings}


def doctor(cfg: TrainConfig) -> dict[str, Any]:
    """`lorakit doctor` on the config's dataset, with the images it flags."""
    from ..doctor import diagnose

    if not cfg.train_data_dir:
        raise UserError("no train_data_dir to check", key="train_data_dir", fix="set the dataset folder first")
    rep = diagnose(cfg.train_data_dir, reg_data_dir=cfg.reg_data_dir, caption_extension=cfg.caption_extension,
                   resolution=cfg.resolution, min_bucket_reso=cfg.min_bucket_reso,
                   max_bucket_reso=cfg.max_bucket_reso, bucket_reso_steps=cfg.bucket_reso_steps)
    flagged: dict[str, list[str]] = {}
    for group in rep.duplicates:
        for p in group:
            flagged.setdefault(str(p), []).append("exact duplicate")
    for a, b, d in rep.near_duplicates:
        for p in (a, b):
            flagged.setdefault(str(p), []).append(f"near duplicate ({d}/64 bits)")
    for p in rep.uncaptioned:
        flagged.setdefault(str(p), []).append("no caption")
    for p in rep.small:
        flagged.setdefault(str(p), []).append("smaller than the training size")
    return {"text": rep.render(), "fixes": rep.fixes, "notes": rep.notes, "exit_code": rep.exit_code,
            "flagged": [{"path": p, "why": ", ".join(w)} for p, w in flagged.items()]}


def open_config(path: Path, fmt: str = "auto") -> dict[str, Any]:
    """A config file's values for the form (UserError when the file cannot be read as `fmt`)."""
    from ..config.load import read_config_file

    res = read_config_file(path, fmt)
    res.problems.raise_all()
    return form_values(res.values)
