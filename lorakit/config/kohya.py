"""kohya_ss GUI JSON -> our schema (docs/kohya-rules.md 1; docs/kohya.md).

GUI exports are loose JSON (trailing commas, numbers as strings such as "1.0", "576,576", "31337");
they are accepted as written. Every key goes through the one key table (kohya_keys.py): mapped onto
the schema, ignored with the reason, or -- at a value lorakit cannot train as written -- a problem.
`additional_parameters` is parsed as the sd-scripts command line it is and overrides the JSON, as in
the GUI. All problems of a file (refused values, unknown keys, duplicate keys, bad values) are
collected in ImportResult.problems and raised together.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from ..adapters import registry
from ..adapters.declare import GUI_BLOCK_ARGS
from ..errors import ConfigError
from .checks import parse_kv_args
from .kohya_keys import (FIELDS, MAPPED, NETWORK_ARGS, RUNTIME, SD_SCRIPTS_ARGS, ImportResult, Problems,
                         adafactor_scheduler, as_bool, blank, first_text_encoder_lr, is_neutral, lookup, refusal,
                         suggest, unknown_key)
from .netargs import LYCORIS_MODULE, LYCORIS_PRESETS, apply_network_args, lycoris_conv_defaults
from .schema import field_attr
from .sdscripts import read_dataset_config

# LoRA_type -> (network_type, the GUI keys it passes as network args): what the adapter types declare
# (adapters/declare.py GuiLoraType), Standard first.
LORA_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    name: (ntype, gui.gui_args) for name, (ntype, gui) in registry.gui_lora_types().items()}
# LoRA_types of the GUI that lorakit refuses, with the reason
REFUSED_LORA_TYPES = {
    "Kohya LoHa": "sd-scripts' own LoHa module (networks.loha) is not supported: use LyCORIS/LoHa",
    "Kohya LoKr": "sd-scripts' own LoKr module (networks.lokr) is not supported: use LyCORIS/LoKr",
    "LoRA-FA": "LoRA-FA (networks.lora_fa) is not supported",
    "Flux1": "FLUX.1 models are not supported", "Flux1 OFT": "FLUX.1 models are not supported",
    "Anima": "Anima models are not supported", "HunyuanImage-2.1": "HunyuanImage models are not supported",
    "Lumina": "Lumina models are not supported",
}
# GUI keys that are network args of some LoRA_type; their schema name in network_args
NETWORK_ARG_KEYS = {"factor": "factor", "decompose_both": "decompose_both", "use_cp": "use_tucker",
                    "use_tucker": "use_tucker", "train_on_input": "train_on_input", "unit": "unit",
                    "dora_wd": "dora_wd", "constrain": "constraint", "rescaled": "rescaled"}
# network-arg keys the table decides (neutral-only until implemented); read only for the types passing them
TABLE_ARG_KEYS = ("rank_dropout_scale", "train_norm", "bypass_mode", "use_scalar", *GUI_BLOCK_ARGS)
# the GUI's SDXL checkboxes: it passes their sd-scripts flag only with sdxl ticked
SDXL_ONLY = ("sdxl_cache_text_encoder_outputs", "sdxl_no_half_vae")
DYNAMO_KEYS = ("dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic")


def lora_type_module(lora_type: str) -> str:
    """The sd-scripts network_module the GUI passes for a LoRA_type (declared by its adapter type)."""
    found = registry.by_gui_lora_type(lora_type)
    # an unknown LoRA_type is already a listed problem; the import goes on to find the others
    return found[1].network_module if found else "networks.lora"


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
    """Both forms: `"betas=0.9,0.99" "d0=1e-3"` and the 2023 `--optimizer_args "decouple=True" ...`."""
    tokens = shlex.split(text or "")
    if tokens and tokens[0] == "--optimizer_args":
        tokens = tokens[1:]
    return parse_kv_args(tokens)


def parse_additional_parameters(text: str) -> list[tuple[str, list[str]]]:
    """`--key v1 v2 --flag` -> [("key", ["v1", "v2"]), ("flag", [])]; quotes removed as a shell would."""
    out: list[tuple[str, list[str]]] = []
    for tok in shlex.split(text or ""):
        if tok.startswith("--") and len(tok) > 2 and not tok[2].isdigit():
            key, eq, val = tok[2:].partition("=")
            out.append((key.replace("-", "_"), [val] if eq else []))
        elif not out:
            raise ConfigError(f"additional_parameters: '{tok}' does not follow a --flag", key="additional_parameters",
                              fix="write sd-scripts flags: --name value ...")
        else:
            out[-1][1].append(tok)
    return out


def gui_number(key: str, value: Any) -> Any:
    """The GUI stores numbers as strings ("1.0", "31337"); convert them for non-text fields."""
    if not isinstance(value, str) or "str" in str(FIELDS[key].annotation):
        return value
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def _is_zero(v: Any) -> bool:
    try:
        return not isinstance(v, bool) and float(v) == 0.0
    except (TypeError, ValueError):
        return False


def _unset(name: str, value: Any) -> bool:
    """The GUI's "not set" for schema field `name`: blank, a 0 where the schema's default is unset, or the
    GUI-only unset values (vae_batch_size 0, bucket_reso_steps 1, ...): the GUI passes nothing then."""
    if blank(value) or (_is_zero(value) and (FIELDS[name].default is None or name == "clip_skip")):
        return True
    try:
        return not isinstance(value, bool) and float(value) in field_attr(name, "gui_unset", ())
    except (TypeError, ValueError):
        return False


def read_json_object(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The top-level object of a (loose) JSON file and the keys it sets more than once."""
    dups: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out and k not in dups:
                dups.append(k)
            out[k] = v
        return out
    file = str(path)
    try:
        raw = json.loads(strip_trailing_commas(Path(path).read_text(encoding="utf-8-sig")), object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e}", file=file, fix="check quotes and commas") from None
    if not isinstance(raw, dict):
        raise ConfigError("expected a JSON object of settings", file=file)
    return raw, dups


# The GUI's widget defaults where sd-scripts' own default, the schema's, differs (the July-2023 GUI of the
# seed guides and today's agree): a file without the key trains as the GUI would launch it.
GUI_WIDGET_DEFAULTS: dict[str, Any] = {"enable_bucket": True, "bucket_no_upscale": True, "max_bucket_reso": 2048,
                                       "mixed_precision": "fp16"}


class _Importer:
    def __init__(self, raw: dict[str, Any], file: str | None):
        self.raw, self.file = raw, file
        self.res = ImportResult({}, problems=Problems(file))
        self.problems = self.res.problems
        self.cli_network: dict[str, Any] = {}  # --network_module / --network_args of additional_parameters

    def ignore(self, key: str, why: str) -> None:
        self.res.ignored.append((key, why))

    def set(self, key: str, value: Any, source: str = "") -> None:
        """One kohya key through the table: mapped, ignored, or a problem."""
        entry = lookup(key)
        where = f"--{key}" if source else key
        if entry is None:
            msg, fix = unknown_key(key)
            self.problems.add(key, msg.replace(f"'{key}'", f"'{where}'") if source else msg, fix)
        elif entry.kind == MAPPED:
            if entry.field not in FIELDS:  # a key of sd-scripts' TOML / dataset config, not of the GUI
                self.problems.add(key, f"'{where}' is an sd-scripts key; a kohya_ss GUI JSON cannot set it",
                                  "remove it, or give it in an sd-scripts TOML (--format sd-scripts)")
            elif not _unset(entry.field, value):
                name = entry.field
                if name in ("optimizer_args", "lr_scheduler_args") and isinstance(value, str):
                    try:
                        value = (parse_optimizer_args(value) if name == "optimizer_args"
                                 else parse_kv_args(shlex.split(value)))
                    except ValueError as e:
                        self.problems.add(key, f"{key}: {e}", 'write "key=value" items, e.g. "betas=0.9,0.99"')
                        return
                self.res.values[name] = gui_number(name, value)
        elif entry.kind == RUNTIME:
            self.ignore(where, entry.why)
        elif is_neutral(entry, value, self.raw):
            self.ignore(where, f"{value!r} changes nothing ({entry.why})")
        else:
            self.problems.add(key, *refusal(where, entry, value))

    def run(self) -> ImportResult:
        raw, res = self.raw, self.res
        lora_type = str(raw.get("LoRA_type", "Standard"))
        if lora_type in REFUSED_LORA_TYPES:
            self.problems.add("LoRA_type", f"LoRA_type '{lora_type}': {REFUSED_LORA_TYPES[lora_type]}",
                              "choose an SD1.x/2.x LoRA_type (Standard, LyCORIS/...)")
            lora_type = "Standard"
        elif lora_type not in LORA_TYPES:
            guess = suggest(lora_type, LORA_TYPES)
            self.problems.add("LoRA_type", f"LoRA_type '{lora_type}' is unknown",
                              f"did you mean '{guess}'?" if guess else f"use one of {', '.join(LORA_TYPES)}")
            lora_type = "Standard"
        res.values["network_type"], uses = LORA_TYPES[lora_type]
        noise_type = str(raw.get("noise_offset_type", "Original"))
        skip_noise = {"Original": ("multires_noise_iterations", "multires_noise_discount"),
                      "Multires": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength")}
        if noise_type not in skip_noise:
            self.problems.add("noise_offset_type", f"noise_offset_type '{noise_type}' is unknown",
                              "use Original or Multires")
            noise_type = "Original"
        scheduler = str(raw.get("lr_scheduler", "constant"))
        for key, value in raw.items():
            if key in ("LoRA_type", "additional_parameters", "noise_offset_type") or key in DYNAMO_KEYS:
                continue
            if key in skip_noise[noise_type]:
                self.ignore(key, f"noise_offset_type is {noise_type}")
            elif key in ("conv_dim", "conv_alpha") and "conv" not in uses:
                self.ignore(key, f"LoRA_type '{lora_type}' adapts no 3x3 convs")
            elif key in NETWORK_ARG_KEYS or key in TABLE_ARG_KEYS:
                if key not in uses:
                    self.ignore(key, f"not a network arg of LoRA_type '{lora_type}'")
                elif key in TABLE_ARG_KEYS:
                    self.set(key, value)
                else:
                    self.network_arg(key, value)
            elif key == "LyCORIS_preset":
                self.preset(value, lora_type)
            elif key == "lr_warmup":
                self.warmup(value, scheduler)
            elif key == "lr_scheduler_num_cycles" and blank(value):
                if scheduler == "cosine_with_restarts" and not blank(raw.get("epoch")):
                    res.values["lr_scheduler_num_cycles"] = raw["epoch"]  # GUI: blank -> epoch
            elif key in SDXL_ONLY and "sdxl" in raw and not as_bool(raw["sdxl"]):
                self.ignore(key, "sdxl is false: the GUI passes it only for SDXL")
            elif key == "sdxl_cache_text_encoder_outputs":  # the GUI's checkbox for --cache_text_encoder_outputs
                if as_bool(value):
                    res.values["cache_text_encoder_outputs"] = True
                else:
                    self.ignore(key, "off: lorakit caches on its own while the text encoder is frozen (same results)")
            elif key == "seed" and _is_zero(value):
                self.ignore(key, "0 means a random seed")
            elif key == "dataset_config":
                continue  # read after the other keys (its values override them): dataset_toml()
            else:
                self.set(key, value)
        self.dynamo()
        adafactor_scheduler(res)
        self.dataset_toml()
        for key, value in GUI_WIDGET_DEFAULTS.items():
            if key not in raw:  # the GUI keeps its widget's value for a key its file lacks
                res.values.setdefault(key, value)
                self.ignore(key, f"not in the file: the GUI default ({'on' if value is True else value}) is used")
        if "conv" in uses and lora_type.startswith("LyCORIS/") or lora_type == "LoCon":
            lycoris_conv_defaults(res.values)
        try:
            flags = parse_additional_parameters(str(raw.get("additional_parameters") or ""))
        except (ConfigError, ValueError) as e:
            self.problems.add("additional_parameters", getattr(e, "message", str(e)), "write sd-scripts flags: "
                                                                                      "--name value ...")
            flags = []
        for key, values in flags:
            self.flag(key, values)
        if self.cli_network:
            self.cli_network_args(lora_type)
        if res.network_args:
            res.values["network_args"] = {**res.values.get("network_args", {}), **res.network_args}
        return res

    def dataset_toml(self) -> None:
        """The GUI's dataset_config: an sd-scripts dataset TOML, read as sdscripts.py reads it (a path as
        written, else relative to the JSON's folder); its folders replace train_data_dir / reg_data_dir."""
        value = self.raw.get("dataset_config")
        if blank(value):
            return
        path = Path(str(value))
        if not path.is_absolute() and not path.is_file() and self.file:
            path = Path(self.file).parent / path
        try:
            read_dataset_config(path, self.res)
        except ConfigError as e:
            self.problems.add(e.key or "dataset_config", f"{e.file}: {e.message}" if e.file else e.message,
                              e.fix or "")

    def preset(self, value: Any, lora_type: str) -> None:
        """LyCORIS presets apply to the LyCORIS types only (kohya_ss passes them to lycoris.kohya)."""
        if not lora_type.startswith("LyCORIS/"):
            self.ignore("LyCORIS_preset", f"LoRA_type '{lora_type}' is not a LyCORIS type")
        elif value in LYCORIS_PRESETS:
            self.res.values["network_preset"] = value
        elif not blank(value):
            self.problems.add("LyCORIS_preset", f"LyCORIS_preset '{value}' is not supported yet",
                              f"use {' or '.join(LYCORIS_PRESETS)}")

    def network_arg(self, key: str, value: Any) -> None:
        name = NETWORK_ARG_KEYS[key]
        if blank(value):
            return
        try:
            if name in ("use_tucker", "decompose_both", "train_on_input", "dora_wd", "rescaled"):
                value = as_bool(value)
            elif name in ("factor", "unit"):
                value = int(float(value))
            elif name == "constraint":
                value = float(value)
        except (TypeError, ValueError):
            self.problems.add(key, f"{key} = {value!r} is not a number", "write a number, e.g. -1")
            return
        self.res.network_args[name] = value

    def cli_network_args(self, lora_type: str) -> None:
        """additional_parameters' --network_module / --network_args, mapped as sd-scripts would read
        them (netargs.apply_network_args) and overriding the JSON per key. The module is the LoRA_type's
        unless --network_module names one; with lycoris.kohya and no algo= the LoRA_type's algorithm
        stays. An algo= (or module) that selects another algorithm than LoRA_type wins, as it does on
        sd-scripts' command line; the LoRA_type's own network args (factor, unit, ...) are then dropped.
        Per key, not sd-scripts' argparse (where a second --network_args replaces the GUI's whole
        list, algo and conv_dim included): only what the user wrote changes."""
        res, cli = self.res, self.cli_network
        module = cli.get("module") or lora_type_module(lora_type)
        args = dict(cli.get("args", {}))
        before = res.values["network_type"]
        if module == LYCORIS_MODULE and lora_type_module(lora_type) == LYCORIS_MODULE:
            args.setdefault("algo", before)  # every LyCORIS network_type is also its algo name
        try:
            rest = apply_network_args(module, args, res.values, self.file, key="additional_parameters",
                                      problems=self.problems, raw=self.raw, ignored=res.ignored)
        except ConfigError as e:
            self.problems.add("additional_parameters", e.message, e.fix or "")
            return
        if res.values["network_type"] != before:
            self.ignore("LoRA_type", f"additional_parameters select network_type '{res.values['network_type']}' "
                                     f"instead of '{before}'")
            for k in res.network_args:
                self.ignore(k, f"a network arg of LoRA_type '{lora_type}', not of the algorithm "
                               "additional_parameters select")
            res.network_args = {}
        res.network_args.update(rest)

    def dynamo(self) -> None:
        """GUI dynamo_backend: "no" = off; any other backend compiles (torch_compile) with it."""
        raw, res = self.raw, self.res
        present = [k for k in DYNAMO_KEYS if k in raw]
        backend = "no" if blank(raw.get("dynamo_backend")) else str(raw["dynamo_backend"]).strip().lower()
        if backend == "no":
            for k in present:
                self.ignore(k, "dynamo_backend is 'no': nothing is compiled")
            return
        res.values["torch_compile"], res.values["dynamo_backend"] = True, backend
        mode = str(raw.get("dynamo_mode") or "default").strip()
        if mode != "default":
            res.values["torch_compile_mode"] = mode  # checked by the schema like any mode
        elif "dynamo_mode" in raw:
            self.ignore("dynamo_mode", "default is torch.compile's default mode")
        if "dynamo_use_dynamic" in raw:
            res.values["torch_compile_dynamic"] = as_bool(raw["dynamo_use_dynamic"])
        if "dynamo_use_fullgraph" in raw:  # how it compiles, not what it computes
            self.ignore("dynamo_use_fullgraph", lookup("dynamo_use_fullgraph").why)  # type: ignore[union-attr]

    def warmup(self, value: Any, scheduler: str) -> None:
        """The GUI's lr_warmup percent, unless lr_warmup_steps > 0 overrides it (common_gui's
        resolve_lr_warmup_steps)."""
        try:
            if float(self.raw.get("lr_warmup_steps") or 0) > 0:
                self.ignore("lr_warmup", "lr_warmup_steps > 0 overrides it (as in the GUI)")
                return
        except (TypeError, ValueError):
            pass  # reported with lr_warmup_steps
        try:
            pct = 0.0 if blank(value) else float(value)
        except (TypeError, ValueError):
            self.problems.add("lr_warmup", f"lr_warmup = {value!r} is not a number", "use a percent such as 10")
            return
        if pct == 0:
            return
        if not 0 < pct < 100:
            self.problems.add("lr_warmup", f"lr_warmup is a percent of the total steps; {pct:g} is not below 100",
                              "use a percent such as 10")
        else:
            self.res.values["lr_warmup_steps"] = pct / 100.0
            if scheduler == "constant":
                self.ignore("lr_warmup", "no effect with the constant schedule (the GUI drops it)")

    def flag(self, key: str, values: list[str]) -> None:
        """One `--key values...` of additional_parameters; it overrides the JSON (sd-scripts' command line)."""
        if key == "network_module":
            if len(values) != 1:
                self.problems.add("additional_parameters", "--network_module takes one module name",
                                  "write e.g. --network_module lycoris.kohya")
            else:
                self.cli_network["module"] = values[0]
            return
        if key in ("optimizer_args", "lr_scheduler_args", "network_args"):
            try:
                value: Any = parse_kv_args(values)
            except ValueError as e:
                self.problems.add("additional_parameters", f"--{key}: {e}",
                                  'write "key=value" items, e.g. --network_args "conv_dim=8"')
                return
            if key == "network_args":  # the last --network_args of the line, as argparse keeps
                self.cli_network["args"] = value
                return
            self.res.values[key] = value
            return
        value = True if not values else values[0] if len(values) == 1 else ",".join(values)
        if key == "text_encoder_lr":  # nargs="*" in sd-scripts
            value = first_text_encoder_lr(values, self.res, "--text_encoder_lr")
        if key in FIELDS:
            self.res.values[key] = gui_number(key, value)
        elif key in SD_SCRIPTS_ARGS:
            self.set(key, value, source="additional_parameters")
        elif key in NETWORK_ARGS:
            self.problems.add("additional_parameters", f"--{key} is an sd-scripts network arg, not a flag",
                              f'write --network_args "{key}=..."')
        else:
            guess = suggest(key, set(FIELDS) | set(SD_SCRIPTS_ARGS))
            self.problems.add("additional_parameters", f"unknown flag --{key}",
                              f"did you mean --{guess}?" if guess else "remove it; see docs/kohya.md")


def import_kohya_json(path: Path, raise_problems: bool = True) -> ImportResult:
    """Read a kohya_ss GUI JSON. Every problem is in the result's problems; raise_problems raises them
    (load.py raises them together with the schema's own validation errors instead)."""
    raw, dups = read_json_object(Path(path))
    res = _Importer(raw, str(path)).run()
    for k in dups:
        res.problems.add(k, f"key '{k}' is set twice in the JSON (the GUI would keep the last)",
                         "keep one of the two settings")
    if raise_problems:
        res.problems.raise_all()
    return res
