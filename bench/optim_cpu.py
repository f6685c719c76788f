"""CPU proxy for issue 8: optimizer step time over 1,000 SD1.5-shaped LoRA tensors.

lorakit's foreach Prodigy / D-Adaptation against the reference packages, same tensors, same
gradients, median of N steps after warm-up, printed side by side. On the CPU `.item()` is
cheap, so this measures per-tensor op overhead, not the GPU host sync (bench/README.md).

    .venv/bin/python bench/optim_cpu.py [--steps 5] [--warmup 2] [--rank 8] [--tensors 1000]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import dadaptation
import dadaptation.experimental
import prodigyopt
import torch

from lorakit.optim import fast_dadapt, fast_prodigy


def sd15_lora_shapes(rank: int, n: int) -> list[tuple[int, ...]]:
    """down/up pairs of SD1.5 LoRA modules (attention, cross-attention, GEGLU FF, 3x3 convs), cycled."""
    mods: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for c in (320, 640, 1280, 1280, 640, 320):
        mods += [((rank, c), (c, rank))] * 6                        # self-attn q,k,v,out; proj_in/out
        mods += [((rank, 768), (c, rank))] * 2                      # cross-attn k,v (text width 768)
        mods += [((rank, c), (8 * c, rank)), ((rank, 4 * c), (c, rank))]  # GEGLU ff
        mods += [((rank, c, 3, 3), (c, rank, 1, 1))]                # a resnet 3x3 conv (LoCon)
        mods += [((rank, 768), (768, rank))] * 4                    # text encoder linears
    shapes = [s for pair in mods for s in pair]
    return [shapes[i % len(shapes)] for i in range(n)]


def make(cls, params, grads, **kw):
    ps = [p.clone().requires_grad_(True) for p in params]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    return cls([{"params": ps[: len(ps) // 4]}, {"params": ps[len(ps) // 4:]}], lr=1.0, **kw)


def time_pair(ref, fast, params, grads, steps, warmup, **kw):
    """Median step times of the two, stepped alternately so that load on the machine hits both alike."""
    opts = [make(ref, params, grads, **kw), make(fast, params, grads, **kw)]
    times: list[list[float]] = [[], []]
    g = torch.Generator().manual_seed(1)
    for i in range(warmup + steps):
        # fresh gradients each step (the same for both): a fixed gradient drives the state into
        # denormals within a few steps, which makes every CPU op ~100x slower for both
        new = [torch.randn(x.shape, generator=g) * 1e-3 for x in grads]
        for opt, t in zip(opts, times):
            for p, x in zip((p for grp in opt.param_groups for p in grp["params"]), new):
                p.grad.copy_(x)
            t0 = time.perf_counter()
            opt.step()
            float(opt.param_groups[0]["d"])  # what the loop reads per step
            if i >= warmup:
                t.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--tensors", type=int, default=1000)
    a = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    shapes = sd15_lora_shapes(a.rank, a.tensors)
    params = [torch.randn(*s, generator=g) * 0.01 * (i % 2 == 0) for i, s in enumerate(shapes)]  # ups start at 0
    grads = [torch.randn(*s, generator=g) * 1e-3 for s in shapes]
    n = sum(p.numel() for p in params)
    print(f"{time.strftime('%Y-%m-%d')}, {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average {open('/proc/loadavg').read().split()[0]}")
    print(f"{len(params)} tensors, {n / 1e6:.2f} M parameters (SD1.5 LoRA rank {a.rank}), "
          f"median of {a.steps} steps after {a.warmup} warm-up")
    print(f"{'optimizer':<24}{'reference ms':>14}{'lorakit ms':>12}{'speed-up':>10}")
    cases = [("Prodigy", prodigyopt.Prodigy, fast_prodigy.Prodigy, {}),
             ("Prodigy (README diff.)", prodigyopt.Prodigy, fast_prodigy.Prodigy,
              dict(safeguard_warmup=True, use_bias_correction=True, weight_decay=0.01)),
             ("DAdaptAdam", dadaptation.DAdaptAdam, fast_dadapt.DAdaptAdam, {}),
             ("DAdaptation (Preprint)", dadaptation.experimental.DAdaptAdamPreprint,
              fast_dadapt.DAdaptAdamPreprint, {}),
             ("DAdaptLion", dadaptation.DAdaptLion, fast_dadapt.DAdaptLion, {})]
    for name, ref, fast, kw in cases:
        t_ref, t_fast = time_pair(ref, fast, params, grads, a.steps, a.warmup, **kw)
        print(f"{name:<24}{t_ref * 1e3:>14.1f}{t_fast * 1e3:>12.1f}{t_ref / t_fast:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
