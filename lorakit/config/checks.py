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
                           f"it); also set block_dims (e.g. network_dim 25 times) or remove {key}")
    if cfg.conv_block_alphas is not None and cfg.conv_block_dims is None:
        out.append("conv_block_alphas is set but conv_block_dims is not (sd-scripts would ignore it); set "
                   "conv_block_dims or remove conv_block_alphas")
    if cfg.block_lr_zero_threshold and not lr_weights:
        out.append("block_lr_zero_threshold is set but no block lr weight (down_lr_weight, mid_lr_weight, "
                   "up_lr_weight); set one or remove block_lr_zero_threshold")
    return out
