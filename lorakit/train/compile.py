"""torch.compile for training: the whole UNet, or its repeated blocks one by one (regional).

Regional compilation compiles each repeated block (diffusers' BasicTransformerBlock and
ResnetBlock2D in the UNet, CLIPEncoderLayer in the text encoder) in place with
`nn.Module.compile`, the adapters inside it included (they replace the forward of the block's
own layers). Dynamo keeps its graphs per code object (for `Module.compile`, nn.Module._call_impl,
one for all the blocks), and since torch 2.5 it lifts a module's parameters to graph inputs
instead of guarding on their identity, so blocks of one class and one parameter and input shape
run the same graph: on SD1.5 (batch 1, 16x16 latents, bench/compile_cpu.py) its 38 blocks compile
as 20 graphs; the 12 CLIP ViT-L layers all have one shape. The glue between the blocks (down/up
sampling, time embedding, norms) runs eagerly, which costs little: the blocks hold nearly all of
the work.

Inductor's FX graph cache (and AOTAutograd's cache) are switched on, under the user's cache
folder unless TORCHINDUCTOR_CACHE_DIR says otherwise (torch's default is a folder in /tmp, which a
reboot clears), so a second run of the same shapes loads its kernels instead of compiling them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

# class names of the blocks compiled one by one; every other module runs eagerly
UNET_REGIONS = ("BasicTransformerBlock", "ResnetBlock2D")
TEXT_ENCODER_REGIONS = ("CLIPEncoderLayer",)


def compile_regions(module: nn.Module, class_names: tuple[str, ...], **kw: Any) -> int:
    """Compile, in place, every submodule whose class is one of `class_names`; the number compiled.

    Each compiled block takes its tensor inputs in a dense layout, copied outside the graph when
    they are strided views: diffusers hands its transformer blocks a transposed view at batch 1
    (Transformer2DModel's permute + reshape makes no copy there), and torch 2.13's inductor computes
    a wrong input gradient for LoRA'd attention on such an input (tests/inductor_repro.py; a copy
    inside the graph is optimised away, one before it is not)."""
    n = 0
    for sub in module.modules():
        if type(sub).__name__ in class_names:
            sub.compile(**kw)
            sub._compiled_call_impl = _dense_inputs(sub._compiled_call_impl)  # what nn.Module.compile set
            n += 1
    return n


def _dense(x: Any) -> Any:
    if not isinstance(x, torch.Tensor) or x.is_contiguous():
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x  # channels_last (channels_last = true) is dense too: keep it
    return x.contiguous()


def _dense_inputs(call: Callable[..., Any]) -> Callable[..., Any]:
    def dense_call(*args: Any, **kwargs: Any) -> Any:
        return call(*map(_dense, args), **{k: _dense(v) for k, v in kwargs.items()})
    return dense_call


def dynamic_shapes() -> None:
    """Set up dynamo for dynamic=True compiles that serve every bucket. By default dynamo gives sizes
    that are equal in the first batch one symbol ("duck sizing"), so a square first bucket would tie
    height to width and the first oblong bucket would compile every block again."""
    import torch.fx.experimental._config as fx_config

    fx_config.use_duck_shape = False


def count_regions(module: nn.Module, class_names: tuple[str, ...]) -> int:
    return sum(type(sub).__name__ in class_names for sub in module.modules())


def cache_dir() -> Path:
    """Where inductor keeps compiled graphs across runs: TORCHINDUCTOR_CACHE_DIR, else the user's cache."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "lorakit" / "inductor"


def enable_graph_cache() -> Path:
    """Inductor's FX graph cache and AOTAutograd's cache on, in cache_dir() (set before the first compile)."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    where = cache_dir()
    where.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(where))
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return where


_remove_notices: Callable[[], None] | None = None


def announce_compiles(emit: Callable[[], None]) -> Callable[[], None]:
    """Call `emit` whenever dynamo starts compiling (a first step, a new bucket shape), so that a
    progress bar can say "compiling" instead of looking stuck. Returns the function that stops it;
    a later call stops the earlier one first (a run that died without ending leaves none behind)."""
    global _remove_notices
    from torch._dynamo.callback import callback_handler

    if _remove_notices is not None:
        _remove_notices()

    def started(_args: Any) -> None:
        emit()
    callback_handler.register_start_callback(started)

    def remove() -> None:
        global _remove_notices
        if started in callback_handler.start_callbacks:
            callback_handler.remove_start_callback(started)
        if _remove_notices is remove:
            _remove_notices = None
    _remove_notices = remove
    return remove


def compiled_regions(module: nn.Module) -> int:
    """How many submodules (the module itself included) were compiled in place."""
    return sum(getattr(m, "_compiled_call_impl", None) is not None for m in module.modules())


def reset_dynamo_counters() -> None:
    from torch._dynamo.utils import counters

    counters.clear()


def unique_graphs() -> int:
    """Graphs dynamo has compiled since the last reset (frames that produced a graph)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


__all__ = ["UNET_REGIONS", "TEXT_ENCODER_REGIONS", "compile_regions", "count_regions", "cache_dir",
           "enable_graph_cache", "announce_compiles", "dynamic_shapes", "compiled_regions", "unique_graphs",
           "reset_dynamo_counters"]
