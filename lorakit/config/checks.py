"""Value parsing and cross-key checks the schema's validators use (schema.py)."""
from __future__ import annotations

import ast
from typing import Any


def parse_kv_args(tokens: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """kohya's 'key=value' tokens; values through ast.literal_eval ('0.9,0.99' -> tuple)."""
    out: dict[str, Any] = {}
    for tok in tokens:
        tok = str(tok).strip().strip('"').strip("'")
        if not tok:
            continue
        if "=" not in tok:
            raise ValueError(f"'{tok}' is not of the form key=value")
        k, v = tok.split("=", 1)
        try:
            out[k.strip()] = ast.literal_eval(v.strip())
        except (ValueError, SyntaxError):
            out[k.strip()] = v.strip()  # kohya keeps a non-literal value as a string
    return out


def parse_resolution(v: Any) -> Any:
    """'W,H', 'WxH' or one number -> (W, H); other values are left to the field's type check."""
    if isinstance(v, (int, float)):
        return (int(v), int(v))
    if not isinstance(v, str):
        return v
    try:
        nums = [int(float(p.strip())) for p in v.replace("x", ",").split(",") if p.strip()]
    except ValueError:
        nums = []
    if len(nums) not in (1, 2):
        raise ValueError(f"'{v}' is not 'W,H' or a single number")
    return (nums[0], nums[-1])


def text_encoder_lrs(v: Any) -> tuple[Any, list[Any]]:
    """sd-scripts' text_encoder_lr takes several values (nargs="*"; the kohya_ss GUI writes one per SDXL text
    encoder, [lr, lr]), but networks.lora and lycoris.kohya train every text encoder at the first one
    (train_network.py: text_encoder_lr[0] without prepare_optimizer_params_with_multiple_te_lrs).
    Returns (the value used, the later values that differ from it and so are not used)."""
    if isinstance(v, str) and "," in v:  # `--text_encoder_lr 1e-4 5e-5` in additional_parameters
        v = [p.strip() for p in v.split(",") if p.strip()]
    if not isinstance(v, (list, tuple)):
        return v, []
    if not v:
        return None, []
    first = v[0]
    return first, [x for x in v[1:] if not _same_number(x, first)]


def _same_number(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return a == b


def one_text_encoder_lr(v: Any) -> tuple[Any, list[Any]]:
    """text_encoder_lr as lorakit's own TOML takes it: one value, or a list of equal values (what the kohya_ss
    GUI writes); a list of different values is refused (the importers apply sd-scripts' first-value rule
    and say so)."""
    first, dropped = text_encoder_lrs(v)
    if dropped:
        raise ValueError(f"{list(v)}: sd-scripts trains every text encoder (SDXL: both) at the first value and "
                         f"ignores {', '.join(map(str, dropped))}; write one value, e.g. text_encoder_lr = {first}")
    return first, dropped


LR_WEIGHT_PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")


def is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def block_problems(cfg: Any) -> list[str]:
    """Block settings that sd-scripts would ignore without a word: each a problem with its fix."""
    out = []
    lr_weights = any(v is not None for v in (cfg.down_lr_weight, cfg.mid_lr_weight, cfg.up_lr_weight))
    if not (cfg.block_dims is not None or lr_weights):
        for key, value in (("block_alphas", cfg.block_alphas), ("conv_block_dims", cfg.conv_block_dims)):
            if value is not None:
                out.append(f"{key} is set but block_dims and the block lr weights are not (sd-scripts would ignore "
                           f"it); also set block_dims (e.g. network_dim 25 times, SDXL 23) or remove {key}")
    if cfg.conv_block_alphas is not None and cfg.conv_block_dims is None:
        out.append("conv_block_alphas is set but conv_block_dims is not (sd-scripts would ignore it); set "
                   "conv_block_dims or remove conv_block_alphas")
    counts = {key: len(value) for key, value in (("block_dims", cfg.block_dims), ("block_alphas", cfg.block_alphas),
                                                 ("conv_block_dims", cfg.conv_block_dims),
                                                 ("conv_block_alphas", cfg.conv_block_alphas)) if value is not None}
    if len(set(counts.values())) > 1:
        out.append("the block lists have different lengths (" + ", ".join(f"{k} {n}" for k, n in counts.items())
                   + "); give each one value per block of the model's family: 25 for SD1.x/2.x, 23 for SDXL")
    if cfg.block_lr_zero_threshold and not lr_weights:
        out.append("block_lr_zero_threshold is set but no block lr weight (down_lr_weight, mid_lr_weight, "
                   "up_lr_weight); set one or remove block_lr_zero_threshold")
    return out
