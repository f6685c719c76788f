"""Per-layer cost of an adapted layer, forward + backward: the measurement behind the choice of
bypass vs merged op per layer type (issue 3 "fast forward"; adapter-format.md "Speed facts").

For the three SD1.5 layer shapes of that table it times, side by side in one run:
  frozen   the base layer alone (input needs grad, weights frozen)
  bypass   base(x) + up(down(x)) * s                     (LoRA's bypass)
  2-op     base(x) + op(x, dW)                           (LyCORIS's default path)
  merged   op(x, W + dW)                                 (lorakit's LoHa/LoKr path)
with dW rebuilt from LoRA (up @ down) or LoHa factors every step, and prints ms and the ratio to
frozen. GPU: batch 32 at 512 px shapes in bf16 autocast, as the table; CPU (--cpu or no CUDA):
batch 2 and fp32, for a smoke run only -- CPU ratios do not transfer to a GPU.

    python bench/adapter_ops.py            # GPU
    python bench/adapter_ops.py --cpu      # about 30 s on 2 cores
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

LAYERS = {  # name -> (kind, in, out, spatial or tokens)
    "conv3x3 320 @64x64": ("conv", 320, 320, 64),
    "conv3x3 1280 @16x16": ("conv", 1280, 1280, 16),
    "ff 320->2560": ("linear", 320, 2560, 4096),
}


def make(kind: str, cin: int, cout: int, size: int, batch: int, device, rank: int = 8):
    g = torch.Generator(device="cpu").manual_seed(0)
    if kind == "conv":
        w = torch.randn(cout, cin, 3, 3, generator=g) * 0.02
        x = torch.randn(batch, cin, size, size, generator=g)
        down = torch.randn(rank, cin, 3, 3, generator=g) * 0.02
        up = torch.randn(cout, rank, 1, 1, generator=g) * 0.02

        def op(inp, weight):
            return F.conv2d(inp, weight, padding=1)

        def lora_dw(d, u):
            return torch.einsum("or,rikl->oikl", u.flatten(1), d)
    else:
        w = torch.randn(cout, cin, generator=g) * 0.02
        x = torch.randn(batch, size, cin, generator=g)
        down = torch.randn(rank, cin, generator=g) * 0.02
        up = torch.randn(cout, rank, generator=g) * 0.02

        def op(inp, weight):
            return F.linear(inp, weight)

        def lora_dw(d, u):
            return u @ d
    to = dict(device=device)
    w, x = w.to(**to), x.to(**to).requires_grad_(True)
    down, up = down.to(**to).requires_grad_(True), up.to(**to).requires_grad_(True)
    flat = w.flatten(1).shape
    hada = [torch.randn(s, generator=g).to(**to).mul_(0.02).requires_grad_(True)
            for s in ((flat[0], rank), (rank, flat[1]), (flat[0], rank), (rank, flat[1]))]

    def loha_dw():
        return ((hada[0] @ hada[1]) * (hada[2] @ hada[3])).view_as(w)

    def lora_bypass(inp):
        return op(inp, w) + op_lowrank(inp)

    def op_lowrank(inp):
        if kind == "conv":
            return F.conv2d(F.conv2d(inp, down, padding=1), up)
        return F.linear(F.linear(inp, down), up)

    variants = {
        "frozen": lambda: op(x, w),
        "lora bypass": lambda: lora_bypass(x),
        "lora 2-op": lambda: op(x, w) + op(x, lora_dw(down, up)),
        "lora merged": lambda: op(x, w + lora_dw(down, up)),
        "loha 2-op": lambda: op(x, w) + op(x, loha_dw()),
        "loha merged": lambda: op(x, w + loha_dw()),
    }
    return variants


def time_variant(fn, device, dtype, steps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            out = fn()
        out.float().sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda" if cuda else "cpu")
    batch, dtype, steps, warmup = (32, torch.bfloat16, 20, 5) if cuda else (2, torch.float32, 3, 1)
    name = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"adapter_ops, {time.strftime('%Y-%m-%d')}, {name}, batch {batch}, {dtype}, fwd+bwd, median ms")
    for layer, (kind, cin, cout, size) in LAYERS.items():
        if not cuda:  # keep the CPU smoke run short: a quarter of the spatial size
            size = size // 4 if kind == "conv" else size // 16
        variants = make(kind, cin, cout, size, batch, device)
        ms = {v: time_variant(fn, device, dtype, steps, warmup) for v, fn in variants.items()}
        row = "  ".join(f"{v} {t:7.2f} ({t / ms['frozen']:.2f}x)" for v, t in ms.items())
        print(f"{layer:22s} {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
