"""Speed options that change how fast a step runs, never what it computes: torch.compile and channels_last.

Compiling (lorakit/train/compile.py: the whole UNet or its repeated blocks) happens IN PLACE
(nn.Module.compile) after the adapters are applied: the module
objects, parameter names, state_dict keys, saved adapter files and resume state stay exactly
as without it; only calls go through the compiled graph. Sampling and validation call the same
UNet under no_grad / eval(); dynamo guards on grad mode and on the training flags, so those
calls get graphs of their own instead of wrong ones.
"""
from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.utils.checkpoint
from torch.torch_version import TorchVersion  # compares a version string with a tuple, +local and dev tags included

from ..errors import ConfigError
from ..events import EventBus
from . import compile as compiling

if TYPE_CHECKING:
    from ..adapters.network import AdapterNetwork
    from ..config.schema import TrainConfig
    from ..data.dataset import TrainDataset
    from ..models.family import ModelFamily

# torch.compile modes; "reduce-overhead" adds CUDA graphs (pays at small, launch-bound batches)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# shapes that are not training batches but also run through the compiled UNet: sample prompts
# (their own --w/--h, CFG batch 2), validation batches, the last short batch of a bucket
EXTRA_SHAPES = 16
# From this many training shapes on, a run with static shapes is told of torch_compile_dynamic: on the
# CPU proxy (bench/compile_cpu.py, SD1.5 regional, aot_eager) a dynamic compile cost 1.7 static ones
# and each further shape next to nothing, so dynamic pays from two or three shapes on.
MANY_SHAPES = 3
# the one repeated block diffusers' UNet2DConditionModel runs outside gradient checkpointing
UNCHECKPOINTED_BLOCK = "mid_block.resnets.0"


def known_backends() -> list[str]:
    import torch._dynamo as dynamo

    # the default list hides the "debug" backends (eager, aot_eager), which are real choices here
    return sorted(set(dynamo.list_backends(exclude_tags=())) | {"inductor"})


def validate_speed_config(cfg: Any) -> list[str]:
    """Checks that need no model (preflight). Returns warnings for settings that do nothing."""
    backend, mode = cfg.dynamo_backend, cfg.torch_compile_mode
    warnings: list[str] = []
    if cfg.torch_compile and str((cfg.network_args or {}).get("merged_op", "")).strip().lower() == "auto":
        warnings.append("network_args merged_op = auto measures eager layers only: with torch_compile the compiled "
                        "blocks keep the bypass, only the layers between them are measured (set merged_op = true or "
                        "false to choose for all)")
    if not cfg.torch_compile:
        if backend not in ("inductor", "no"):
            _check_backend(backend)  # a typo is reported even before compiling is switched on
            warnings.append(f"dynamo_backend = {backend} has no effect: torch_compile is off")
        if mode is not None:
            warnings.append(f"torch_compile_mode = {mode} has no effect: torch_compile is off")
        if cfg.torch_compile_dynamic:
            warnings.append("torch_compile_dynamic has no effect: torch_compile is off")
        return warnings
    if backend == "no":
        raise ConfigError("dynamo_backend 'no' means no compiling, but torch_compile is true", key="dynamo_backend",
                          fix="set torch_compile = false, or a backend such as inductor")
    _check_backend(backend)
    if mode not in (None, "default") and backend != "inductor":
        raise ConfigError(f"torch_compile_mode '{mode}' is an inductor mode; dynamo_backend is '{backend}'",
                          key="torch_compile_mode", fix="unset torch_compile_mode or use dynamo_backend = inductor")
    return warnings


# The first torch whose CPU inductor gets tests/inductor_repro.py's input gradient right (2.13.0 is
# off by 120 %, 2.14.1 by 5e-7; releases in between were not measured)
INDUCTOR_CPU_RIGHT_FROM = (2, 14, 1)


def check_compile_device(cfg: Any, device: torch.device, torch_version: str = torch.__version__) -> None:
    """Refuse inductor on the CPU with a torch older than INDUCTOR_CPU_RIGHT_FROM: torch 2.13's
    inductor computes a wrong input gradient there for a LoRA'd attention whose input is a transposed
    view -- what diffusers' transformer blocks get at batch 1 -- while the forward is right, so
    training would go wrong silently (tests/inductor_repro.py; tests/test_compile.py checks the repro
    agrees with this rule on the torch it runs with). Checked once the device is known, before any
    model loads."""
    if cfg.torch_compile and cfg.dynamo_backend == "inductor" and device.type == "cpu" \
            and TorchVersion(torch_version) < INDUCTOR_CPU_RIGHT_FROM:
        right = ".".join(map(str, INDUCTOR_CPU_RIGHT_FROM))
        raise ConfigError(
            f"torch_compile with dynamo_backend 'inductor' on the CPU: torch {torch_version}'s inductor computes "
            "wrong gradients there for LoRA'd attention at batch 1 (docs/speed.md, Known limits), so lorakit "
            "does not run it", key="dynamo_backend",
            fix=f"train on a GPU, or set dynamo_backend = aot_eager (it traces like inductor and runs the ops "
                f"eagerly), or torch_compile = false, or use torch >= {right}")


def _check_backend(backend: str) -> None:
    names = known_backends()
    if backend not in names:
        raise ConfigError(f"dynamo_backend '{backend}' is not a torch.compile backend here", key="dynamo_backend",
                          fix=f"use one of {', '.join(n for n in names if 'TESTING' not in n)}")


def training_shapes(dataset: Any, batch_size: int) -> int:
    """Distinct (bucket, batch size) pairs of the training batches: each is one compiled graph."""
    return len({(dataset.placements[dataset.samples[b[0]]].bucket, len(b))
                for b in dataset.fixed_batches(batch_size)})


def shape_warnings(cfg: TrainConfig, dataset: "TrainDataset") -> list[str]:
    """A hint when static shapes mean many compiles: each (bucket, batch size) pair of the training
    batches compiles its own graphs on its first batch."""
    if not cfg.torch_compile or cfg.torch_compile_dynamic:
        return []
    n = training_shapes(dataset, cfg.train_batch_size)
    if n < MANY_SHAPES:
        return []
    return [f"torch_compile: the training batches come in {n} shapes (bucket x batch size), and each compiles its "
            f"own graphs on its first batch; torch_compile_dynamic = true compiles one graph per block for all of "
            f"them (docs/speed.md)"]


def apply_speed_options(cfg: TrainConfig, m: "ModelFamily", net: "AdapterNetwork", dataset: "TrainDataset",
                        bus: EventBus) -> torch.memory_format:
    """channels_last and torch.compile on the loaded model, after the adapters are applied.
    Returns the memory format of the UNet's inputs."""
    memory_format = torch.preserve_format
    if cfg.channels_last:
        memory_format = torch.channels_last
        m.unet.to(memory_format=torch.channels_last)
        if not dataset.latents_cached:  # the VAE encodes every step only without a latent cache
            m.vae.to(memory_format=torch.channels_last)
        # the adapters' own conv weights stay contiguous: they are small, and the saved and resumed
        # tensors must be contiguous; the convolutions take mixed formats
    if cfg.gradient_checkpointing and net.train_unet:
        recompute_merged_weights(m.unet, net.unet_modules.values())
    if not cfg.torch_compile:
        return memory_format
    import torch._dynamo as dynamo

    # graphs of an earlier run in this process (tests, the bench, a notebook) guard on other module
    # objects: they would never run again, yet count against the recompile limit below
    dynamo.reset()
    # By default dynamic=False: one static graph per input shape, with kernels specialised to it (a
    # dynamic graph's kernels are generic). Each bucket shape then compiles once; torch_compile_dynamic
    # compiles one graph per block for every size instead (bench/compile_cpu.py measures both). Buckets
    # and the sampler bring a bounded set of shapes, so the recompile limit (8 by default, then dynamo
    # falls back to eager for good) is raised to cover all of them.
    shapes = 2 * training_shapes(dataset, cfg.train_batch_size) + EXTRA_SHAPES
    regional = cfg.torch_compile_scope == "regional"
    kw: dict[str, Any] = {"backend": cfg.dynamo_backend, "dynamic": cfg.torch_compile_dynamic}
    if cfg.torch_compile_mode not in (None, "default"):
        kw["mode"] = cfg.torch_compile_mode
    # The text encoder runs forward and backward each step when it is trained; frozen, it runs
    # one small no-grad forward per step, which is not worth a compile (and may be cached away).
    targets = [(m.unet, compiling.UNET_REGIONS)]
    if net.train_text_encoder:
        targets += [(te, compiling.TEXT_ENCODER_REGIONS) for te in m.text_encoders]
    # regional: every compiled block runs nn.Module._call_impl, one code object, so all their graphs
    # (one per block shape and input shape, at most one per block) count against one recompile limit
    per_code = shapes * (sum(compiling.count_regions(mod, names) for mod, names in targets) if regional else 1)
    config = dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), per_code))
    config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4 * per_code)
    if cfg.torch_compile_dynamic:
        compiling.dynamic_shapes()
    if cfg.dynamo_backend == "inductor":
        compiling.enable_graph_cache()
    stop = compiling.announce_compiles(lambda: bus.emit("compiling"))
    bus.subscribe(lambda ev: stop() if ev.kind == "end" else None)
    for module, names in targets:
        if regional:
            compiling.compile_regions(module, names, **kw)
        else:
            module.compile(**kw)
    return memory_format


def checkpoint_transformer_units(unet: Any) -> int:
    """Under gradient checkpointing, each Transformer2DModel that holds one transformer block (SD1.x,
    SD2.x) is checkpointed as a whole -- GroupNorm, proj_in, the block, proj_out -- as sd-scripts'
    U-Net does, instead of diffusers' checkpoint around the block alone. diffusers' way keeps the
    unit's GroupNorm input (in float32: CUDA autocast runs group_norm in float32) and the inputs of
    proj_in, the block and proj_out from forward to backward; one checkpoint keeps the unit's input
    only. Seed A (SD1.5 LoHa) at batch 15, 576 px: 1.86 GiB off the step's peak, 7.56 -> 5.70 GiB
    (bench/peak_cpu.py); the price is one more pass through the GroupNorm and the two projections.
    Units of several blocks (SDXL's 2 and 10) keep diffusers' checkpoint per block (one around ten
    blocks would rebuild all ten blocks' activations at once in backward), and their prologue --
    GroupNorm and proj_in -- gets one of its own: SDXL LoRA at batch 4, 1024 px, 0.28 GiB (8.08 ->
    7.80). Returns how many units were set."""
    n = 0
    for module in unet.modules():
        if type(module).__name__ != "Transformer2DModel" or not module.gradient_checkpointing:
            continue
        if len(module.transformer_blocks) == 1:
            module.gradient_checkpointing = False  # no second checkpoint inside the outer one
            module.forward = functools.partial(_checkpointed, module.forward)
        elif module.is_input_continuous:
            module._operate_on_continuous_inputs = functools.partial(_checkpointed,
                                                                     module._operate_on_continuous_inputs)
        else:
            continue
        n += 1
    return n


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if torch.is_grad_enabled():  # diffusers' condition: also when only the text encoder trains
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpointed_units(unet: Any, part: str = "forward") -> list[str]:
    """Names of the units that checkpoint_transformer_units checkpointed whole (part "forward") or
    whose prologue it checkpointed (part "_operate_on_continuous_inputs")."""
    return [name for name, m in unet.named_modules()
            if isinstance(f := m.__dict__.get(part), functools.partial) and f.func is _checkpointed]


def recompute_merged_weights(unet: Any, adapters: Any) -> int:
    """Under gradient checkpointing, merged-op adapters (LoHa, LoKr, the OFTs) on layers outside
    diffusers' checkpointed blocks (down/up-sampling convs, proj_in/proj_out, time embedding, the
    mid block's first ResNet) are
    checkpointed themselves: their merged weight W + delta W, as large as the layer's weight, was
    held from forward to backward (SD1.5 LoHa: 194 MB whatever the batch, bench/memory_cpu.py); now
    backward runs the layer once more. Returns how many were set."""
    from ..adapters.merged import MergedOpModule

    # diffusers checkpoints each block call, except the mid block's first ResNet, which it calls plainly
    units = set(checkpointed_units(unet))  # whole Transformer2DModels, proj_in and proj_out included
    inside = {id(sub) for name, block in unet.named_modules()
              if (type(block).__name__ in compiling.UNET_REGIONS and name != UNCHECKPOINTED_BLOCK) or name in units
              for sub in block.modules()}
    for name in checkpointed_units(unet, "_operate_on_continuous_inputs"):  # and the prologues' proj_in
        inside |= {id(sub) for sub in unet.get_submodule(name).proj_in.modules()}
    n = 0
    for a in adapters:
        if isinstance(a, MergedOpModule) and id(a.org) not in inside:
            a.recompute_merged = True
            n += 1
    return n


def choose_forms(network: "AdapterNetwork") -> dict[str, float]:
    """merged_op = "auto": time the input shapes the last step met for the first time (adapters/forms.py);
    the step's stats say how many were measured, how many the merged op won, and the seconds it took."""
    board = network.forms
    if board is None or not board.waiting:
        return {}
    from ..adapters.forms import decide

    t0 = time.perf_counter()
    measured, won = decide(board)
    return {"merged_op/measured": measured, "merged_op/merged": won, "merged_op/seconds": time.perf_counter() - t0}
