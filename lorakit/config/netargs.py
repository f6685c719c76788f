"""sd-scripts' `network_module` + `network_args` -> our schema, for both importers.

sd-scripts TOML (sdscripts.py) and the kohya_ss GUI's `additional_parameters` (kohya.py) both
carry sd-scripts' network settings; this one mapping serves both (docs/kohya.md):

- network_module: networks.lora -> lora, networks.dylora -> dylora, lycoris.kohya -> the `algo`
  arg (LyCORIS' default algo is "lora", which is LoCon).
- `algo` only with lycoris.kohya: kohya's own modules would ignore it and train something else
  than the config says, so lorakit refuses it there.
- conv_dim, conv_alpha, dropout (-> network_dropout), rank_dropout, module_dropout are schema keys;
  `preset` (lycoris.kohya) is network_preset (full, attn-mlp, attn-only); use_cp is use_tucker.
- kohya keys given as network args (block_dims, loraplus_lr_ratio, train_norm, ...; kohya_keys.NETWORK_ARGS)
  go through the key table: onto the schema field of that name once it exists, else neutral-only.
- The rest stays in network_args and is checked against the algorithm's options at import
  (an unknown one: ConfigError with a "did you mean"), not only when the model is built.
"""
from __future__ import annotations

from typing import Any

from ..adapters import registry
from ..adapters.base import lycoris_conv_rank
from ..errors import ConfigError
from .kohya_keys import MAPPED, NETWORK_ARGS, RUNTIME, Problems, is_neutral, lookup, refusal, suggest
from .schema import TrainConfig, fields_with
from .sections.network import DIM_KEYS, NETWORK_PRESETS

# sd-scripts network_module -> network_type, and LyCORIS algo -> network_type ("lora" in LyCORIS is
# LoCon): what the adapter types declare (adapters/declare.py)
NETWORK_MODULES = registry.network_modules()
LYCORIS_MODULE = "lycoris.kohya"
LYCORIS_ALGOS = registry.lycoris_algos()
# network args that are schema keys of their own: {arg: field}
LIFTED_ARGS = {arg: name for name, arg in fields_with("network_arg").items()}
LYCORIS_PRESETS = tuple(p for p in NETWORK_PRESETS if p != "kohya")  # network_presets LyCORIS has as preset=
NO_CONV_DEFAULT = ("ia3",)  # LyCORIS algos whose conv_dim/conv_alpha do not default to network_dim/alpha


def network_module_type(module: str, file: str | None, key: str) -> str | None:
    """The network_type of a kohya module (None for lycoris.kohya: its algo arg decides)."""
    if module not in NETWORK_MODULES:
        guess = suggest(module, NETWORK_MODULES)
        raise ConfigError(f"network_module '{module}' is not supported", file=file, key=key,
                          fix=f"did you mean '{guess}'?" if guess else f"use one of {', '.join(NETWORK_MODULES)}")
    return NETWORK_MODULES[module]


def apply_network_args(module: str, args: dict[str, Any], values: dict[str, Any], file: str | None,
                       key: str = "network_args", problems: Problems | None = None,
                       raw: dict[str, Any] | None = None, ignored: list[tuple[str, str]] | None = None
                       ) -> dict[str, Any]:
    """Map `module` + `args` (parsed "k=v" tokens) onto `values` (schema keys; what is there is
    overridden): network_type, the lifted schema keys, network_preset, and for lycoris.kohya the
    LyCORIS conv defaults (setdefault). kohya keys among the args go through the key table
    (`problems` collects their refusals, `ignored` their notes; `raw`: the other settings, for
    neutrality). Returns the args left for the algorithm itself, checked against its options.
    `key` names the setting in errors."""
    args = dict(args)
    ntype = network_module_type(module, file, key)
    algo = args.pop("algo", None)
    if ntype is None:
        name = str(algo if algo is not None else "lora").strip().lower()
        if name not in LYCORIS_ALGOS:
            guess = suggest(name, LYCORIS_ALGOS)
            raise ConfigError(f"LyCORIS algo '{name}' is not supported", file=file, key=key,
                              fix=f"did you mean algo={guess}?" if guess else f"use one of {', '.join(LYCORIS_ALGOS)}")
        ntype = LYCORIS_ALGOS[name]
        if "use_cp" in args:  # LyCORIS' old name; it wins over use_tucker as in LyCORIS
            args["use_tucker"] = args.pop("use_cp")
        if "preset" in args:
            preset = str(args.pop("preset"))
            if preset not in LYCORIS_PRESETS:
                raise ConfigError(f"LyCORIS preset '{preset}' is not supported yet", file=file, key=key,
                                  fix=f"use preset={' / '.join(LYCORIS_PRESETS)}, or remove it (kohya's targets)")
            values["network_preset"] = preset
    elif algo is not None:
        raise ConfigError(f"algo={algo} is a LyCORIS network arg, but network_module is '{module}' (which would "
                          "ignore it)", file=file, key=key,
                          fix=f"use network_module {LYCORIS_MODULE} (in the GUI: a LyCORIS/... LoRA_type), "
                              "or remove algo")
    values["network_type"] = ntype
    for arg, schema_key in LIFTED_ARGS.items():
        if arg in args:
            values[schema_key] = args.pop(arg)
    if module == LYCORIS_MODULE and ntype not in NO_CONV_DEFAULT:
        lycoris_conv_defaults(values)
    table_args(ntype, args, values, key, problems if problems is not None else Problems(file), raw or {},
               ignored if ignored is not None else [], raise_now=problems is None)
    check_algorithm_args(ntype, args, file, key)
    return args


def lycoris_conv_defaults(values: dict[str, Any]) -> None:
    """Set unset conv_dim / conv_alpha in `values` by LyCORIS's rule (adapters.base.lycoris_conv_rank),
    so the config written back out and the file's ss_network_args show them."""
    dims = TrainConfig.model_construct(**{k: values[k] for k in DIM_KEYS if k in values})  # the rest: defaults
    conv_dim, conv_alpha = lycoris_conv_rank(dims)
    values.setdefault("conv_dim", conv_dim)
    values.setdefault("conv_alpha", conv_alpha)


def table_args(network_type: str, args: dict[str, Any], values: dict[str, Any], key: str, problems: Problems,
               raw: dict[str, Any], ignored: list[tuple[str, str]], raise_now: bool) -> None:
    """Move the kohya keys among `args` that the algorithm does not take itself out of them, through the
    key table: mapped onto `values`, ignored, or a problem."""
    from ..adapters.registry import get_algorithm

    own = getattr(get_algorithm(network_type), "ARGS", {})
    for name in [a for a in args if a in NETWORK_ARGS and a not in own]:
        value, entry = args.pop(name), lookup(name)
        assert entry is not None  # every NETWORK_ARGS name has an entry (tests/test_kohya_keys.py)
        if entry.kind == MAPPED:
            values[entry.field] = value
        elif entry.kind == RUNTIME:
            ignored.append((f"{key} {name}", entry.why))
        elif is_neutral(entry, value, {**raw, **args, **values}):
            ignored.append((f"{key} {name}", f"{value!r} changes nothing ({entry.why})"))
        else:
            problems.add(name, *refusal(f"{key} {name}", entry, value))
    if raise_now:
        problems.raise_all()


def check_algorithm_args(network_type: str, args: dict[str, Any], file: str | None, key: str) -> None:
    """`args` checked against the options of `network_type` now (the network build checks them
    again): an unknown option or a bad value is a ConfigError naming the file, with a "did you mean"."""
    if not args:
        return
    from ..adapters.base import validate_network_args
    from ..adapters.registry import get_algorithm

    try:
        validate_network_args(get_algorithm(network_type), args)
    except ConfigError as e:
        raise ConfigError(e.message, file=file, key=key, fix=e.fix) from None
