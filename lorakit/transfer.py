"""Host-to-device copies that do not make the host wait for the device.

A plain ``.to("cuda")`` of a tensor in pageable host memory synchronizes: it returns once the copy
has run, after everything already queued on the stream, so the host stops until the device has
caught up and cannot queue the next kernels meanwhile (``torch.cuda.set_sync_debug_mode`` reports
it). Copied from pinned memory with ``non_blocking`` it is queued like a kernel; torch's caching
host allocator keeps the pinned source alive until the copy has run. The per-step inputs built on
the host (noise, timesteps, token ids, token weights, SDXL's time ids) go through here.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


def to_device(t: torch.Tensor, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`t` on `device` (as `dtype`), queued without a host wait when it goes from the CPU to CUDA."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device, dtype) if dtype is not None else t.to(device)
    if dtype is not None:
        t = t.to(dtype)  # on the host: the same rounding, half the bytes to copy for bf16
    return t.pin_memory().to(device, non_blocking=True)


# where modules wait while the device does not need them (bench/peak_cpu.py points it elsewhere to
# tell a move to the host from one to the device when both are the CPU)
HOST = torch.device("cpu")


def module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def on_device(module: torch.nn.Module, device: torch.device | str) -> Iterator[torch.nn.Module]:
    """`module` on `device` for the block, then back where it was (its dtype unchanged).

    The VAE is needed on the device only while it encodes latents to cache or decodes samples:
    between those it stays on the host, as sd-scripts moves it after caching (an SD VAE in float32
    is 335 MB of device memory a step never touches)."""
    home = module_device(module)
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


@contextlib.contextmanager
def on_device_all(modules, device: torch.device | str) -> Iterator[None]:
    """on_device for each of `modules` (the text encoders of a family: one or two)."""
    with contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(on_device(module, device))
        yield
