"""sd-scripts `--config_file` TOML (and its `dataset_config`) -> our schema (docs/kohya.md).

sd-scripts reads a --config_file by flattening every table one level deep; the keys are
its argparse names. Most of them are TrainConfig keys already; network_module +
network_args become network_type + network_args (netargs.py, shared with the GUI importer:
conv_dim, conv_alpha, dropout, rank_dropout, module_dropout and preset become schema keys);
every other key goes through the key table (kohya_keys.py): ignored with the reason, or refused
by name unless at its neutral value; all problems are raised together; only a key no kohya version
knows gets a "did you mean".

`dataset_config = "file.toml"` names sd-scripts' dataset TOML ([general], [[datasets]],
[[datasets.subsets]]). Its subsets become `dataset_subsets`; dataset-level settings apply
to the run (all datasets must agree); a subset-level caption/augmentation setting becomes the
run's setting when every subset has the same value, else each subset keeps its own value
(dataset_subsets entries; the data layer applies it to that subset's images). alpha_mask must
agree. Values fall back subset -> dataset -> [general] -> the config_file, as in sd-scripts'
config_util (generate_params_by_fallbacks).
"""
from __future__ import annotations

import shlex
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .kohya_keys import (DATASET_KEYS as SD_DATASET_KEYS, FIELDS, MAPPED, NETWORK_ARGS, RUNTIME, SD_SCRIPTS_ARGS,
                         ImportResult, Problems, adafactor_scheduler, first_text_encoder_lr, is_neutral, lookup,
                         refusal, suggest, unknown_key)
from .netargs import apply_network_args
from .checks import parse_kv_args
from .schema import TrainConfig, fields_with
from .sections.data import SUBSET_OPTIONS

# Keys only an sd-scripts config has: any of them (or a table that is not a lorakit section) marks one.
MARKERS = ("network_module", "dataset_config")
# the table names of sd-scripts' own example configs (its docs/config_README)
SD_SCRIPTS_TABLES = ("model_arguments", "additional_network_arguments", "optimizer_arguments",
                     "dataset_arguments", "training_arguments", "sample_prompt_arguments", "saving_arguments",
                     "logging_arguments", "dreambooth_arguments", "huggingface_arguments")
# keys the reader handles itself
OWN_KEYS = ("network_module", "network_args", "dataset_config")

# dataset_config
DATASET_KEYS = {key: name for name, key in fields_with("dataset_key").items()}  # {sd-scripts key: field}
SUBSET_KEYS = ("image_dir", "num_repeats", "class_tokens", "caption_extension", "is_reg", "conditioning_data_dir")
# subset-level keys that must be the same for every subset (the loss mask is one setting of the run)
GLOBAL_SUBSET_KEYS = ("alpha_mask",)
# subset-level keys each subset may set for itself (sections.data.SUBSET_OPTIONS)
PER_SUBSET_KEYS = SUBSET_OPTIONS
# dataset_config keys that are no lorakit key: the key table decides (neutral-only / refused / runtime-only)
TABLE_DATASET_KEYS = tuple(k for k in SD_DATASET_KEYS if k not in FIELDS and lookup(k) is not None
                           and lookup(k).kind != MAPPED)  # type: ignore[union-attr]
SD_CAPTION_DEFAULT = ".caption"  # sd-scripts' --caption_extension default


def flatten(raw: dict[str, Any], file: str) -> dict[str, Any]:
    """sd-scripts' read_config_from_file: each table's keys move to the top (one level)."""
    flat: dict[str, Any] = {}

    def put(k: str, v: Any) -> None:
        if k in flat:
            raise ConfigError(f"key '{k}' is set twice", file=file, key=k, fix="keep one of the two settings")
        flat[k] = v
    for k, v in raw.items():
        if isinstance(v, dict):
            for k2, v2 in v.items():
                put(k2, v2)
        else:
            put(k, v)
    return flat


def sdscripts_only_keys() -> set[str]:
    """Keys an sd-scripts config may have that are no lorakit key: they mark a file read as lorakit
    TOML by mistake (the "unknown key" error then says --format sd-scripts)."""
    return (set(SD_SCRIPTS_ARGS) | set(MARKERS)) - set(TrainConfig.model_fields)


def looks_like_sdscripts(raw: dict[str, Any]) -> bool:
    """True for an sd-scripts config: a marker key (network_module, dataset_config) at the top or
    in a table, or one of sd-scripts' table names. A lorakit TOML has none of them, so a lorakit
    TOML with a typo'd [section] still gets lorakit's "unknown section" error."""
    for k, v in raw.items():
        if k in MARKERS or k in SD_SCRIPTS_TABLES or (isinstance(v, dict) and any(k2 in MARKERS for k2 in v)):
            return True
    return False


def _kv(value: Any, key: str, file: str) -> dict[str, Any]:
    if isinstance(value, dict):
        return dict(value)
    tokens = shlex.split(value) if isinstance(value, str) else list(value)
    try:
        return parse_kv_args(tokens)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}", file=file, key=key, fix='write a list of "key=value" strings') from None


def import_sdscripts_toml(path: Path, raw: dict[str, Any] | None = None) -> ImportResult:
    """Read an sd-scripts --config_file TOML (and the dataset_config it names)."""
    file = str(path)
    if raw is None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"not valid TOML: {e}", file=file) from None
    flat = flatten(raw, file)
    res = ImportResult({}, problems=Problems(file))
    for key, value in flat.items():
        if key in OWN_KEYS:
            continue
        if key in ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk") and not value:  # the default
            res.ignored.append((key, "off: lorakit caches on its own while the text encoder is frozen (same results)"))
        elif key in FIELDS:
            if key in ("optimizer_args", "lr_scheduler_args"):
                value = _kv(value, key, file)
            elif key == "text_encoder_lr":
                value = first_text_encoder_lr(value, res, key)
            res.values[key] = value
        else:
            _table_key(key, value, flat, res)
    args = _kv(flat.get("network_args", []), "network_args", file)
    try:
        rest = apply_network_args(str(flat.get("network_module", "networks.lora")), args, res.values, file,
                                  problems=res.problems, raw=flat, ignored=res.ignored)
    except ConfigError as e:
        res.problems.add(e.key or "network_args", e.message, e.fix or "")
        rest = {}
    adafactor_scheduler(res)
    res.problems.raise_all()
    if rest:
        res.values["network_args"] = rest
    if "caption_extension" not in flat:
        res.values["caption_extension"] = SD_CAPTION_DEFAULT
        res.ignored.append(("caption_extension", f"not set: sd-scripts' default {SD_CAPTION_DEFAULT} is used"))
    if flat.get("dataset_config"):
        dpath = Path(str(flat["dataset_config"]))
        if not dpath.is_absolute() and not dpath.is_file():
            dpath = Path(path).parent / dpath  # sd-scripts: relative to the working folder; then the config's
        read_dataset_config(dpath, res)
    return res


def _table_key(key: str, value: Any, flat: dict[str, Any], res: ImportResult) -> None:
    """An sd-scripts key that is no schema field, through the key table."""
    entry = lookup(key)
    if key not in SD_SCRIPTS_ARGS and key not in NETWORK_ARGS:  # a GUI key, or none at all
        if entry is not None and entry.kind == MAPPED and entry.field in FIELDS:
            res.problems.add(key, f"'{key}' is a kohya_ss GUI key, not an sd-scripts argument",
                             f"write {entry.field}")
        elif entry is not None:
            res.problems.add(key, f"'{key}' is a kohya_ss GUI key, not an sd-scripts argument", "remove it")
        else:
            res.problems.add(key, *unknown_key(key))
    elif entry is None:
        res.problems.add(key, *unknown_key(key))
    elif entry.kind == MAPPED:
        if entry.field in FIELDS:
            res.values[entry.field] = value  # caption_extention: sd-scripts' old spelling
        else:
            res.problems.add(key, f"'{key}' belongs in the dataset_config TOML", "move it there")
    elif entry.kind == RUNTIME:
        res.ignored.append((key, entry.why))
    elif is_neutral(entry, value, flat):
        res.ignored.append((key, f"{value!r} changes nothing ({entry.why})"))
    else:
        res.problems.add(key, *refusal(key, entry, value))


def _pick(key: str, *levels: dict[str, Any]) -> Any:
    for level in levels:
        if key in level:
            return level[key]
    return None


def _check_keys(table: dict[str, Any], allowed: set[str], where: str, problems: Problems) -> None:
    for k in table:
        if k not in allowed:
            guess = suggest(k, allowed)
            problems.add(k, f"unknown key '{k}' in {where}",
                         f"did you mean '{guess}'?" if guess else "see sd-scripts' dataset_config keys")


def read_dataset_config(path: Path, res: ImportResult) -> None:
    """sd-scripts' dataset_config TOML onto res.values (dataset_subsets and the run's data settings).
    Every problem of the file is raised together; nothing is written to res.values when there is one."""
    file = str(path)
    if not path.is_file():
        raise ConfigError("dataset_config file not found", file=file, key="dataset_config", fix="check the path")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"not valid TOML: {e}", file=file) from None
    problems = Problems(file)
    _check_keys(raw, {"general", "datasets"}, "the dataset config's top level", problems)
    general = raw.get("general", {})
    datasets = raw.get("datasets", [])
    subset_level = set(SUBSET_KEYS) | set(GLOBAL_SUBSET_KEYS) | set(PER_SUBSET_KEYS) | set(TABLE_DATASET_KEYS)
    _check_keys(general, set(DATASET_KEYS) | subset_level - {"image_dir"}, "[general]", problems)
    if not datasets:
        problems.add("datasets", "no [[datasets]]", "add [[datasets]] with [[datasets.subsets]]")
    values = res.values
    cfg_level = {k: values[k] for k in GLOBAL_SUBSET_KEYS + PER_SUBSET_KEYS + ("caption_extension",) if k in values}
    subsets: list[dict[str, Any]] = []
    dataset_vals: dict[str, dict[str, Any]] = {}  # key -> {repr: value}, to compare any TOML value
    global_vals: dict[str, dict[str, Any]] = {}
    for d in datasets:
        _check_keys(d, set(DATASET_KEYS) | subset_level | {"subsets"} - {"image_dir"}, "[[datasets]]", problems)
        for k in DATASET_KEYS:
            v = _pick(k, d, general)
            if v is not None:
                dataset_vals.setdefault(k, {})[repr(v)] = v
        for s in d.get("subsets", []):
            _check_keys(s, subset_level, "[[datasets.subsets]]", problems)
            levels = (s, d, general, cfg_level)
            if not s.get("image_dir"):
                problems.add("image_dir", "a subset has no image_dir",
                             "lorakit reads DreamBooth-style subsets: give each one an image_dir")
                continue
            for k in TABLE_DATASET_KEYS:
                v, entry = _pick(k, s, d, general), lookup(k)
                if v is not None and entry.kind != RUNTIME and not is_neutral(entry, v, s):  # type: ignore[union-attr]
                    msg, fix = refusal(k, entry, v)  # type: ignore[arg-type]
                    problems.add(k, msg, fix)
            for k in GLOBAL_SUBSET_KEYS + PER_SUBSET_KEYS:
                v = _pick(k, *levels)
                global_vals.setdefault(k, {})[repr(v)] = v
            subsets.append({"image_dir": str(s["image_dir"]), "num_repeats": int(_pick("num_repeats", s, d, general) or 1),
                            "class_tokens": str(_pick("class_tokens", s, d, general) or ""),
                            "caption_extension": str(_pick("caption_extension", *levels) or SD_CAPTION_DEFAULT),
                            "is_reg": bool(_pick("is_reg", s, d, general) or False),
                            **{k: _pick(k, *levels) for k in PER_SUBSET_KEYS},
                            **({"conditioning_data_dir": str(s["conditioning_data_dir"])}
                               if s.get("conditioning_data_dir") else {})})
    if datasets and not subsets and not problems.items:
        problems.add("subsets", "no [[datasets.subsets]]", "add [[datasets.subsets]] with image_dir")
    for k, vs in dataset_vals.items():
        if len(vs) > 1:
            problems.add(k, f"the datasets disagree on {k} ({', '.join(vs)}); per-dataset values are not supported",
                         f"give every dataset the same {k}")
    for k, vs in global_vals.items():
        if len(vs) > 1 and k in GLOBAL_SUBSET_KEYS:
            problems.add(k, f"the subsets disagree on {k} ({', '.join(sorted(vs))}); it is one setting of the "
                            "whole run in lorakit", f"give every subset the same {k}")
    problems.raise_all()
    for k, vs in dataset_vals.items():
        values[DATASET_KEYS[k]] = next(iter(vs.values()))
    for k, vs in global_vals.items():
        v = next(iter(vs.values()))
        if len(vs) == 1 and v is not None:
            values[k] = v  # every subset agrees: the run's value (as before; --set can change it)
    for sub in subsets:  # keep a subset's own value only where the subsets differ
        for k in PER_SUBSET_KEYS:
            if sub[k] is None or len(global_vals[k]) == 1:
                del sub[k]
    for k in ("train_data_dir", "reg_data_dir"):
        if values.pop(k, None):
            res.ignored.append((k, "dataset_config gives the image folders (sd-scripts ignores it too)"))
    exts = {sub["caption_extension"] for sub in subsets}
    if len(exts) == 1:  # shown by plan/metadata; each subset carries its own anyway
        values["caption_extension"] = exts.pop()
    values["dataset_subsets"] = subsets
