"""Training-loop settings that need their own rules: checks before the model loads, and the
precision and text-encoder-stop steps applied to a built run (sd-scripts'
full_fp16 / full_bf16, fp8_base, train_db's stop_text_encoder_training).
"""
from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config.schema import TrainConfig
    from .run import Run

FP8 = "float8_e4m3fn"
FP16_TINY = 2.0 ** -24  # the smallest float16 above 0: a smaller Adam eps rounds to 0
# adapters that add their output to the base layer's output; the others merge into its weight
FP8_TYPES = ("lora", "locon", "dylora", "ia3")
TORCH_ADAM = ("adamw", "adam")  # torch's Adam keeps its state in the parameters' dtype


def check_train_settings(cfg: "TrainConfig") -> list[str]:
    """Raise one ConfigError listing every contradiction of these settings; return warnings."""
    problems: list[tuple[str, str, str]] = []  # (key, what is wrong, fix)
    warnings: list[str] = []
    mp = cfg.mixed_precision
    if cfg.full_fp16 and cfg.full_bf16:
        problems.append(("full_bf16", "full_fp16 and full_bf16 are both set",
                         "set at most one: full_fp16 with mixed_precision 'fp16', full_bf16 with 'bf16'"))
    elif cfg.full_fp16 and mp != "fp16":
        problems.append(("full_fp16", f"full_fp16 needs mixed_precision = 'fp16' (it is '{mp}')",
                         "set mixed_precision = 'fp16', or remove full_fp16"))
    elif cfg.full_bf16 and mp != "bf16":
        problems.append(("full_bf16", f"full_bf16 needs mixed_precision = 'bf16' (it is '{mp}')",
                         "set mixed_precision = 'bf16', or remove full_bf16"))
    eps = cfg.optimizer_args.get("eps", 1e-8)
    if cfg.full_fp16 and cfg.optimizer_type.lower() in TORCH_ADAM and isinstance(eps, float) and eps < FP16_TINY:
        problems.append(("optimizer_args", f"full_fp16 with {cfg.optimizer_type}: eps {eps:g} is 0 in float16, so "
                         "an adapter weight whose gradient is 0 (all of them at the first step) becomes NaN",
                         "add eps=1e-4 to optimizer_args, or use full_bf16 with mixed_precision = 'bf16'"))
    if cfg.fp8_base:
        if not hasattr(torch, FP8):
            problems.append(("fp8_base", f"this torch ({torch.__version__}) has no {FP8} type",
                             "install torch 2.1 or later, or remove fp8_base"))
        if cfg.network_type not in FP8_TYPES or cfg.network_args.get("dora_wd"):
            what = "DoRA (dora_wd)" if cfg.network_type in FP8_TYPES else f"network_type '{cfg.network_type}'"
            problems.append(("fp8_base", f"{what} computes with the base weights themselves, which fp8_base "
                             "stores in float8 (only matmuls and convolutions can read them)",
                             f"use network_type {', '.join(FP8_TYPES)} without dora_wd, or remove fp8_base"))
        if mp == "no":
            problems.append(("fp8_base", "fp8_base computes in the autocast dtype, but mixed_precision is 'no'",
                             "set mixed_precision = 'bf16' (or 'fp16'), or remove fp8_base"))
        elif mp == "fp16" and not torch.cuda.is_available():
            problems.append(("fp8_base", "fp8_base with fp16 needs a CUDA GPU (CPU autocast computes in bfloat16 "
                             "only) and this machine has none", "set mixed_precision = 'bf16', or remove fp8_base"))
    stop = cfg.stop_text_encoder_training
    if stop and cfg.network_train_text_encoder_only:
        problems.append(("stop_text_encoder_training", "network_train_text_encoder_only is set: after the text "
                         "encoder stops nothing would train", "remove stop_text_encoder_training, or train the UNet"))
    elif stop > 0 and cfg.resolved_text_encoder_lr() == 0:
        warnings.append("stop_text_encoder_training has no effect: the text encoder is not trained")
    if cfg.log_with in ("wandb", "all") and importlib.util.find_spec("wandb") is None:
        problems.append(("log_with", f"log_with = '{cfg.log_with}' needs the wandb package, which is not "
                         "installed", "pip install wandb, or set log_with = 'tensorboard'"))
    if len(problems) == 1:
        key, msg, fix = problems[0]
        raise ConfigError(msg, key=key, fix=fix)
    if problems:
        lines = "\n".join(f"  key '{k}': {m}; fix: {f}" for k, m, f in problems)
        raise ConfigError(f"{len(problems)} settings cannot work together:\n{lines}", key=problems[0][0],
                          fix="see each line above")
    return warnings


# ---- precision -----------------------------------------------------------------------

def adapter_dtype(cfg: "TrainConfig") -> torch.dtype | None:
    """The dtype the adapter weights (and so their gradients and optimizer state) train in:
    float16 / bfloat16 with full_fp16 / full_bf16 (sd-scripts: network.to(weight_dtype)), else
    None (float32)."""
    if cfg.full_fp16:
        return torch.float16
    return torch.bfloat16 if cfg.full_bf16 else None


def allow_fp16_gradients(accelerator) -> None:
    """full_fp16: the gradient scaler refuses float16 gradients by default (it expects float32
    master weights); let it unscale them in place, as sd-scripts' patch does."""
    scaler = accelerator.scaler
    if scaler is None:
        return
    unscale = scaler._unscale_grads_
    scaler._unscale_grads_ = lambda opt, inv_scale, found_inf, allow_fp16: unscale(opt, inv_scale, found_inf, True)


def store_base_in_fp8(network: nn.Module, *models: nn.Module) -> int:
    """fp8_base: the weight of every nn.Linear / nn.Conv2d of `models` that is not the adapter
    network's stored as float8_e4m3fn; autocast casts it to the compute dtype at each use. Biases,
    norms and embeddings keep their dtype, so no op outside autocast's cast lists sees a float8
    tensor (sd-scripts casts whole models and keeps the text encoder's embeddings). Returns the count."""
    n = 0
    fp8 = getattr(torch, FP8)
    adapter = {id(p) for p in network.parameters()}  # also an untrained text encoder's adapters
    for root in models:
        for m in root.modules():
            if type(m) in (nn.Linear, nn.Conv2d) and id(m.weight) not in adapter:
                m.weight.data = m.weight.data.to(fp8)
                n += 1
    return n


# ---- stop_text_encoder_training -------------------------------------------------------

def freeze_text_encoder(run: "Run") -> None:
    """From here on the text encoder's adapters get no gradient, so the optimizer skips them
    (no update, no weight decay; their lr keeps its schedule), as train_db's requires_grad_(False)."""
    from .text_cache import TextCache

    for module in run.network.text_encoder_modules.values():
        for p in module.parameters():
            p.requires_grad_(False)
            p.grad = None
    for encoder in run.model.text_encoders:
        encoder.train(False)
    run.text.training = False
    run.text.stop_step = None
    if run.cfg.cache_text_encoder_outputs is not False and run.text.cache is None:
        run.text.cache = TextCache()  # frozen now: its outputs can be reused
