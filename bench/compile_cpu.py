"""Compile cost on the CPU: the full-size SD1.5 UNet with LoRA, compiled whole vs regional (issue 18).

The UNet (random weights from lorakit/models/configs/sd15, float32) gets lorakit's adapters
(`--network lora` rank 8, or `loha` as seed A), then one first forward+backward is timed per mode,
each after `torch._dynamo.reset()`:

- eager: no compile (the floor);
- whole: `unet.compile()`, the whole UNet one graph (torch_compile_scope = "whole");
- regional: each BasicTransformerBlock / ResnetBlock2D compiled in place (lorakit/train/compile.py).

With `--backend aot_eager` (default) that first step is dynamo + AOTAutograd tracing plus the eager
run of the traced ops: the part of compiling that does not depend on the device. `--backend
inductor` adds inductor's CPU code generation (C++; minutes), with inductor's FX graph cache and
AOTAutograd's cache on as in a run, each mode in a fresh cache folder so that it pays its full
compile; `--cache-dir DIR` keeps the folder, so the same command run twice times a second run's
compile (the cache across runs). Printed side by side as ratios, since the machine is shared:
absolute times mean little.

    OMP_NUM_THREADS=2 nice -n 10 python bench/compile_cpu.py                       # ~1 min per mode
    OMP_NUM_THREADS=2 nice -n 10 python bench/compile_cpu.py --checkpointing --network loha
    OMP_NUM_THREADS=2 nice -n 10 python bench/compile_cpu.py --backend inductor --modes whole regional
    python bench/compile_cpu.py --backend inductor --modes regional --cache-dir /tmp/ic   # twice: cold, warm
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.config.load import load_config  # noqa: E402
from lorakit.models.configs_data import config_folder  # noqa: E402
from lorakit.train import compile as compiling  # noqa: E402


def build_unet(network: str, checkpointing: bool):
    from diffusers import UNet2DConditionModel

    from lorakit.adapters.network import create_network

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads((config_folder(False, False) / "unet" / "config.json").read_text()))
    unet.requires_grad_(False)
    values = {"network_type": network, "network_dim": 8, "network_alpha": 8, "network_train_unet_only": True}
    if network == "loha":
        values.update(conv_dim=8, conv_alpha=8)
    net = create_network(load_config(None, [], values), unet, None)
    net.apply()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet, net


def step(unet, batch: int, latent: int) -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, latent, latent, generator=g)
    ctx = torch.randn(batch, 154, 768, generator=g)
    t = torch.full((batch,), 500)
    t0 = time.perf_counter()
    unet(x, t, ctx).sample.float().square().mean().backward()
    return time.perf_counter() - t0


def measure(mode: str, args) -> dict:
    import torch._dynamo as dynamo

    dynamo.reset()
    compiling.reset_dynamo_counters()
    unet, net = build_unet(args.network, args.checkpointing)
    kw = {"backend": args.backend, "dynamic": False}
    if mode == "whole":
        unet.compile(**kw)
    elif mode == "regional":
        n = compiling.compile_regions(unet, compiling.UNET_REGIONS, **kw)
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, n)
        dynamo.config.accumulated_cache_size_limit = max(dynamo.config.accumulated_cache_size_limit, 4 * n)
    first = step(unet, args.batch, args.latent)
    second = step(unet, args.batch, args.latent)
    grads = sum(p.grad.double().abs().sum().item() for p in net.parameters() if p.grad is not None)
    return {"mode": mode, "first_s": first, "second_s": second, "graphs": compiling.unique_graphs(),
            "regions": compiling.compiled_regions(unet), "grad_sum": grads}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="aot_eager")
    ap.add_argument("--network", default="lora", choices=["lora", "loha"])
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latent", type=int, default=16, help="latent side (16 = 128 px images)")
    ap.add_argument("--modes", nargs="*", default=["eager", "whole", "regional"])
    ap.add_argument("--cache-dir", help="inductor's cache folder (default: a fresh one per mode); run the same "
                                        "command twice with one folder to time a second run's compile")
    args = ap.parse_args()
    print(f"SD1.5 UNet + {args.network}, backend {args.backend}, batch {args.batch}, {args.latent}x{args.latent} "
          f"latents, checkpointing {args.checkpointing}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    if args.backend == "inductor":  # as a run compiles (lorakit/train/compile.py enable_graph_cache)
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        functorch_config.enable_autograd_cache = True
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

    rows = []
    for mode in args.modes:
        with tempfile.TemporaryDirectory() as fresh, temporary_cache_dir(args.cache_dir or fresh):
            r = measure(mode, args)  # from nothing, or from what an earlier process left in --cache-dir
        rows.append(r)
        print(f"{mode:9s} first fwd+bwd {r['first_s']:7.1f} s   second {r['second_s']:6.2f} s   "
              f"graphs {r['graphs']:3d}   compiled modules {r['regions']:3d}   grad sum {r['grad_sum']:.6e}",
              flush=True)
    by = {r["mode"]: r for r in rows}
    if "eager" in by:
        for mode in ("whole", "regional"):
            if mode in by:
                over = by[mode]["first_s"] - by["eager"]["first_s"]
                by[mode]["overhead"] = over
                print(f"{mode:9s} compile overhead (first step - eager first step) {over:7.1f} s")
    if "whole" in by and "regional" in by:
        key = "overhead" if "overhead" in by["whole"] else "first_s"
        print(f"ratio whole / regional ({key}): {by['whole'][key] / max(1e-9, by['regional'][key]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
