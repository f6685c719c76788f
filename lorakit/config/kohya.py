"""kohya_ss GUI JSON -> our schema (kohya-semantics.md section 1; docs/kohya.md).

GUI exports are loose JSON (trailing commas, numbers as strings such as "1.0",
"576,576", "31337"); they are accepted as written. Keys map onto TrainConfig; GUI-only
keys are listed as ignored with the reason; `additional_parameters` is parsed as the
sd-scripts command line it is and overrides the JSON, as in the GUI. kohya settings
that lorakit does not implement yet are accepted at a value that changes nothing;
at any other value they are "pending": `import_kohya_json` (strict) refuses the config
listing all of them, so that a config never trains differently from what it says.
A key that is none of these is an error with a "did you mean".
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .load import suggest, unknown_key_error
from .netargs import LYCORIS_MODULE, apply_network_args
from .schema import TrainConfig, parse_kv_args

# GUI key -> schema key, where only the name differs.
RENAMED = {
    "max_resolution": "resolution",
    "epoch": "max_train_epochs",  # GUI: epoch counts epochs (the current GUI's 1600-step default ignores it)
    "optimizer": "optimizer_type",
    "lora_network_weights": "network_weights",
}

# Keys the GUI writes that do not change a LoRA run, with the reason.
GUI_ONLY = {
    "model_list": "GUI model picker; the path in pretrained_model_name_or_path is used",
    "no_token_padding": "DreamBooth script only; no effect on adapter training",
    "save_model_as": "lorakit writes .safetensors",
    "xformers": "lorakit always uses PyTorch SDPA attention",
    "mem_eff_attn": "lorakit always uses PyTorch SDPA attention",
    "use_wandb": "TensorBoard only",
    "wandb_api_key": "TensorBoard only",
    "noise_offset_type": "selects which noise keys apply (Original: noise_offset; Multires: multires_*)",
    "unit": "read as the DyLoRA block size (network arg)",
    "factor": "read as a LoKr network arg", "decompose_both": "read as a LoKr network arg",
    "use_cp": "read as a LyCORIS network arg", "use_tucker": "read as a LyCORIS network arg",
    "train_on_input": "read as an iA3 network arg",
}

# kohya settings without a schema field yet -> the value that changes nothing.
# A key here that gets a schema field (added by its feature) is mapped instead.
NEUTRAL: dict[str, Any] = {
    "noise_offset": 0, "adaptive_noise_scale": 0, "noise_offset_random_strength": False,
    "multires_noise_iterations": 0, "multires_noise_discount": None, "min_snr_gamma": 0,
    "scale_weight_norms": 0,
}
# NEUTRAL None: only neutral while bucketing / multires is off (see _neutral).

# LoRA_type -> (network_type, network args read from the GUI keys)
LYCORIS_ARGS = ("use_tucker", "rank_dropout", "module_dropout")
LORA_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Standard": ("lora", ()),
    "Kohya LoCon": ("lora", ("conv",)),
    "LoCon": ("locon", ("conv", *LYCORIS_ARGS)),  # the GUI renames "LoCon" to "LyCORIS/LoCon"
    "LyCORIS/LoCon": ("locon", ("conv", *LYCORIS_ARGS)),
    "LyCORIS/LoHa": ("loha", ("conv", *LYCORIS_ARGS)),
    "LyCORIS/LoKr": ("lokr", ("conv", *LYCORIS_ARGS, "factor", "decompose_both")),
    "LyCORIS/iA3": ("ia3", ("train_on_input",)),
    "LyCORIS/DyLoRA": ("dylora", ("conv", *LYCORIS_ARGS, "unit")),
    "Kohya DyLoRA": ("dylora", ("conv", "unit")),
    "LyCORIS/GLoRA": ("glora", ("conv", *LYCORIS_ARGS)),
    "LyCORIS/BOFT": ("boft", ("conv", *LYCORIS_ARGS)),
    "LyCORIS/Diag-OFT": ("diag-oft", ("conv", *LYCORIS_ARGS)),
    "LyCORIS/Native Fine-Tuning": ("full", ("conv", *LYCORIS_ARGS)),
}
NETWORK_ARG_KEYS = ("factor", "decompose_both", "use_cp", "use_tucker", "train_on_input", "unit")
# the GUI's accelerate-launch dynamo settings; dynamo_backend "no" is off (see _Importer.dynamo)
DYNAMO_KEYS = ("dynamo_backend", "dynamo_mode", "dynamo_use_fullgraph", "dynamo_use_dynamic")


def lora_type_module(lora_type: str) -> str:
    """The sd-scripts network_module the GUI passes for a LoRA_type."""
    if lora_type.startswith("LyCORIS/") or lora_type == "LoCon":
        return LYCORIS_MODULE
    return "networks.dylora" if lora_type == "Kohya DyLoRA" else "networks.lora"

# sd-scripts flags in additional_parameters that change how a run computes, not what: listed as
# ignored (sd-scripts TOMLs ignore them too: config/sdscripts.py IGNORED starts from this table)
IGNORED_FLAGS = {
    "cache_text_encoder_outputs_to_disk": "lorakit keeps text-encoder outputs in memory (cache_text_encoder_outputs)",
    "sdpa": "lorakit always uses PyTorch SDPA attention",
    "xformers": "lorakit always uses PyTorch SDPA attention",
    "mem_eff_attn": "lorakit always uses PyTorch SDPA attention",
    "lowram": "memory placement flag", "highvram": "memory placement flag",
}

# sd-scripts command-line flags with no schema field that may appear in additional_parameters
SD_SCRIPTS_FLAGS = set(NEUTRAL) | {"network_args", "network_module", "lr_decay_steps", "lr_scheduler_timescale",
                                   "lr_scheduler_min_lr_ratio", "debiased_estimation_loss", "ip_noise_gamma",
                                   "zero_terminal_snr", "loss_type", "huber_c", "masked_loss"}


@dataclass
class ImportResult:
    values: dict[str, Any]
    ignored: list[tuple[str, str]] = field(default_factory=list)           # (key, reason)
    pending: list[tuple[str, Any, str]] = field(default_factory=list)      # (key, value, why): not implemented
    network_args: dict[str, Any] = field(default_factory=dict)


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


def _is_zero(v: Any) -> bool:
    try:
        return not isinstance(v, bool) and float(v) == 0.0
    except (TypeError, ValueError):
        return False


def _neutral(key: str, value: Any, raw: dict[str, Any]) -> bool:
    want = NEUTRAL[key]
    if _blank(value) or value is False or _is_zero(value) and want is not None:
        return True
    if want is None:  # only matters when its feature is on
        if key == "multires_noise_discount":
            return _neutral("multires_noise_iterations", raw.get("multires_noise_iterations", 0), raw)
        return "enable_bucket" in raw and not _bool(raw["enable_bucket"])  # GUI default: buckets on
    return value == want


def _bool(v: Any) -> bool:
    return str(v).strip().lower() not in ("false", "0", "", "none")  # LyCORIS: str(v).lower() != "false"


class _Importer:
    def __init__(self, raw: dict[str, Any], file: str | None):
        self.raw, self.file = raw, file
        self.res = ImportResult({})
        self.known = TrainConfig.model_fields
        self.cli_network: dict[str, Any] = {}  # --network_module / --network_args of additional_parameters

    def set(self, key: str, value: Any, source: str) -> None:
        """Map one kohya setting onto the schema, or record it as ignored / pending."""
        res, known = self.res, self.known
        name = RENAMED.get(key, key)
        if name in known:
            if _blank(value) or (_is_zero(value) and (known[name].default is None or name == "clip_skip")):
                return  # the GUI never passes "", 0 or False: the default applies
            if name in ("optimizer_args", "lr_scheduler_args", "network_args") and isinstance(value, str):
                value = parse_optimizer_args(value) if name == "optimizer_args" else parse_kv_args(shlex.split(value))
            res.values[name] = _gui_number(name, value)
        elif key in GUI_ONLY:
            res.ignored.append((key, GUI_ONLY[key]))
        elif key in NEUTRAL:
            if _neutral(key, value, self.raw):
                res.ignored.append((key, f"no effect at {value!r}"))
            else:
                res.pending.append((key, value, f"{source}: lorakit does not implement '{key}' yet"))
        else:
            raise unknown_key_error(key, self.file, list(known) + list(GUI_ONLY) + list(RENAMED) + list(NEUTRAL))

    def preset(self, value: str, lora_type: str) -> None:
        """LyCORIS presets apply to the LyCORIS types only (kohya_ss passes them to lycoris.kohya)."""
        if not lora_type.startswith("LyCORIS/"):
            self.res.ignored.append(("LyCORIS_preset", f"LoRA_type '{lora_type}' is not a LyCORIS type"))
        elif value in ("full", "attn-mlp", "attn-only"):
            self.res.values["network_preset"] = value
        elif not _blank(value):
            raise ConfigError(f"LyCORIS_preset '{value}' is not supported yet", file=self.file,
                              key="LyCORIS_preset", fix="use full, attn-mlp or attn-only")

    def run(self) -> ImportResult:
        raw, res = self.raw, self.res
        lora_type = str(raw.get("LoRA_type", "Standard"))
        if lora_type not in LORA_TYPES:
            guess = suggest(lora_type, LORA_TYPES)
            raise ConfigError(f"LoRA_type '{lora_type}' is unknown", file=self.file, key="LoRA_type",
                              fix=f"did you mean '{guess}'?" if guess else f"use one of {', '.join(LORA_TYPES)}")
        res.values["network_type"], uses = LORA_TYPES[lora_type]
        noise_type = str(raw.get("noise_offset_type", "Original"))
        skip_noise = {"Original": ("multires_noise_iterations", "multires_noise_discount"),
                      "Multires": ("noise_offset", "adaptive_noise_scale", "noise_offset_random_strength")}
        if noise_type not in skip_noise:
            raise ConfigError(f"noise_offset_type '{noise_type}' is unknown", file=self.file,
                              key="noise_offset_type", fix="use Original or Multires")
        scheduler = str(raw.get("lr_scheduler", "constant"))
        for key, value in raw.items():
            if key in ("LoRA_type", "additional_parameters") or key in DYNAMO_KEYS:
                continue
            if key in skip_noise[noise_type]:
                res.ignored.append((key, f"noise_offset_type is {noise_type}"))
            elif key in ("conv_dim", "conv_alpha") and "conv" not in uses:
                res.ignored.append((key, f"LoRA_type '{lora_type}' adapts no 3x3 convs"))
            elif key in NETWORK_ARG_KEYS:
                self.network_arg(key, value, uses, lora_type)
            elif key == "LyCORIS_preset":
                self.preset(str(value), lora_type)
            elif key == "optimizer_args":
                res.values["optimizer_args"] = parse_optimizer_args(value) if isinstance(value, str) else value
            elif key == "lr_warmup":
                self.warmup(value, scheduler)
            elif key == "lr_scheduler_num_cycles" and _blank(value):
                if scheduler == "cosine_with_restarts" and not _blank(raw.get("epoch")):
                    res.values["lr_scheduler_num_cycles"] = int(raw["epoch"])  # GUI: blank -> epoch
            elif key == "sdxl_cache_text_encoder_outputs":  # the GUI's checkbox for --cache_text_encoder_outputs
                if _bool(value):
                    res.values["cache_text_encoder_outputs"] = True
                else:
                    res.ignored.append((key, "off: lorakit caches on its own while the text encoder is frozen "
                                             "(same results)"))
            elif key == "seed" and _is_zero(value):
                res.ignored.append((key, "0 means a random seed"))
            else:
                self.set(key, value, "the JSON")
        self.dynamo()
        if "enable_bucket" not in raw:  # the GUI's checkbox defaults to on
            res.values.setdefault("enable_bucket", True)
            res.ignored.append(("enable_bucket", "not in the file: the GUI default (on) is used"))
        if "conv" in uses and lora_type.startswith("LyCORIS/") or lora_type == "LoCon":
            res.values.setdefault("conv_dim", res.values.get("network_dim", 8))  # LyCORIS default
            res.values.setdefault("conv_alpha", res.values.get("network_alpha", 1))
        for key, values in parse_additional_parameters(str(raw.get("additional_parameters") or "")):
            self.flag(key, values)
        if self.cli_network:
            self.cli_network_args(lora_type)
        if res.network_args:
            if "network_args" in self.known:
                res.values["network_args"] = {**res.values.get("network_args", {}), **res.network_args}
            else:
                res.pending.append(("network_args", res.network_args, f"LoRA_type '{lora_type}' network args; "
                                    "the schema has no network_args yet"))
        return res

    def network_arg(self, key: str, value: Any, uses: tuple[str, ...], lora_type: str) -> None:
        name = {"use_cp": "use_tucker"}.get(key, key)
        if name not in uses or _blank(value):
            self.res.ignored.append((key, f"not a network arg of LoRA_type '{lora_type}'"))
            return
        if name in ("use_tucker", "decompose_both", "train_on_input"):
            value = _bool(value)
        elif name in ("factor", "unit"):
            value = int(float(value))
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
        rest = apply_network_args(module, args, res.values, self.file, key="additional_parameters")
        if res.values["network_type"] != before:
            res.ignored.append(("LoRA_type", f"additional_parameters select network_type "
                                             f"'{res.values['network_type']}' instead of '{before}'"))
            for k in res.network_args:
                res.ignored.append((k, f"a network arg of LoRA_type '{lora_type}', not of the algorithm "
                                       "additional_parameters select"))
            res.network_args = {}
        res.network_args.update(rest)

    def dynamo(self) -> None:
        """GUI dynamo_backend: "no" = off; any other backend compiles (torch_compile) with it."""
        raw, res = self.raw, self.res
        present = [k for k in DYNAMO_KEYS if k in raw]
        backend = "no" if _blank(raw.get("dynamo_backend")) else str(raw["dynamo_backend"]).strip().lower()
        if backend == "no":
            res.ignored += [(k, "dynamo_backend is 'no': nothing is compiled") for k in present]
            return
        res.values["torch_compile"], res.values["dynamo_backend"] = True, backend
        mode = str(raw.get("dynamo_mode") or "default").strip()
        if mode != "default":
            res.values["torch_compile_mode"] = mode  # checked by the schema like any mode
        elif "dynamo_mode" in raw:
            res.ignored.append(("dynamo_mode", "default is torch.compile's default mode"))
        for k in ("dynamo_use_fullgraph", "dynamo_use_dynamic"):
            if k in raw:  # how it compiles, not what it computes
                res.ignored.append((k, "lorakit compiles one static graph per bucket shape and allows graph "
                                       "breaks (results are the same)"))

    def warmup(self, value: Any, scheduler: str) -> None:
        pct = 0.0 if _blank(value) else float(value)
        if pct == 0:
            return
        if not 0 < pct < 100:
            raise ConfigError(f"lr_warmup is a percent of the total steps; {pct:g} is not below 100",
                              file=self.file, key="lr_warmup", fix="use a percent such as 10")
        else:
            self.res.values["lr_warmup_steps"] = pct / 100.0
            if scheduler == "constant":
                self.res.ignored.append(("lr_warmup", "no effect with the constant schedule (the GUI drops it)"))

    def flag(self, key: str, values: list[str]) -> None:
        """One `--key values...` of additional_parameters; it overrides the JSON (sd-scripts' command line)."""
        known = self.known
        if key == "network_module":
            if len(values) != 1:
                raise ConfigError("additional_parameters: --network_module takes one module name", file=self.file,
                                  key="additional_parameters", fix="write e.g. --network_module lycoris.kohya")
            self.cli_network["module"] = values[0]
            return
        if key in ("optimizer_args", "lr_scheduler_args", "network_args"):
            try:
                value: Any = parse_kv_args(values)
            except ValueError as e:
                raise ConfigError(f"additional_parameters: --{key}: {e}", file=self.file, key="additional_parameters",
                                  fix='write "key=value" items, e.g. --network_args "conv_dim=8"') from None
            if key == "network_args":  # the last --network_args of the line, as argparse keeps
                self.cli_network["args"] = value
                return
        elif not values:
            value = True  # a store_true flag
        else:
            value = values[0] if len(values) == 1 else ",".join(values)
        if key in known:
            self.res.values[key] = _gui_number(key, value)
        elif key in IGNORED_FLAGS:
            self.res.ignored.append((f"--{key}", IGNORED_FLAGS[key]))
        elif key in NEUTRAL or key in SD_SCRIPTS_FLAGS:
            self.set(key, value, "additional_parameters")
        else:
            guess = suggest(key, list(known) + sorted(SD_SCRIPTS_FLAGS))
            raise ConfigError(f"additional_parameters: unknown flag --{key}", file=self.file,
                              key="additional_parameters",
                              fix=f"did you mean --{guess}?" if guess else "remove it; see docs/kohya.md")


def import_kohya_json(path: Path, strict: bool = True) -> ImportResult:
    """Read a kohya_ss GUI JSON. strict: refuse settings lorakit does not implement yet (all listed)."""
    file = str(path)
    try:
        raw = json.loads(strip_trailing_commas(Path(path).read_text(encoding="utf-8-sig")))
    except json.JSONDecodeError as e:
        raise ConfigError(f"not valid JSON: {e}", file=file, fix="check quotes and commas") from None
    if not isinstance(raw, dict):
        raise ConfigError("expected a JSON object of settings", file=file)
    res = _Importer(raw, file).run()
    if strict and res.pending:
        listed = "; ".join(f"{k} = {v!r}" for k, v, _ in res.pending)
        raise ConfigError(f"kohya settings lorakit does not implement yet: {listed}", file=file,
                          key=res.pending[0][0], fix="remove them or set them to 0/off; docs/kohya.md lists "
                                                     "what is supported")
    return res
