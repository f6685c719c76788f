"""Compile cost on the CPU: the full-size SD1.5 UNet with LoRA, compiled whole vs regional (issue 18).

The UNet (random weights from lorakit/models/configs/sd15, float32) gets lorakit's adapters
(`--network lora` rank 8, or `loha` as seed A), then one first forward+backward is timed per mode,
each after `torch._dynamo.reset()`:

- eager: no compile (the floor);
- whole: `unet.compile()`, the whole UNet one graph (torch_compile_scope = "whole");
- regional: each BasicTransformerBlock / ResnetBlock2D compiled in place (lorakit/train/compile.py);
- dynamic: regional with dynamic shapes (torch_compile_dynamic): one graph per block for every size.

`--latents 16 12x20 20x12` times the first step of each shape in turn (a bucketed dataset: each new
bucket's first batch compiles again with static shapes) and sums them; the overhead is that sum
minus eager's sum.

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
    OMP_NUM_THREADS=2 python bench/compile_cpu.py --modes eager regional dynamic --latents 16 12x20 20x12 24x8
    OMP_NUM_THREADS=2 python bench/compile_cpu.py --model sdxl --modes eager regional whole --latents 16
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
from lorakit.models.sdxl_configs import sdxl_unet_config  # noqa: E402
from lorakit.train import compile as compiling  # noqa: E402


def build_unet(network: str, checkpointing: bool, model: str = "sd15"):
    from diffusers import UNet2DConditionModel

    from lorakit.adapters.network import create_network

    torch.manual_seed(0)
    if model == "sdxl":
        unet = UNet2DConditionModel.from_config(sdxl_unet_config())
    else:
        unet = UNet2DConditionModel.from_config(
            json.loads((config_folder(False, False) / "unet" / "config.json").read_text()))
    unet.requires_grad_(False)
    values = {"network_type": network, "network_dim": 8, "network_alpha": 8, "network_train_unet_only": True}
    if network == "loha":
        values.update(conv_dim=8, conv_alpha=8)
    net = create_network(load_config(None, [], values), unet, None, family="sdxl" if model == "sdxl" else "sd1")
    net.apply()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet, net


def step(unet, batch: int, latent: tuple[int, int]) -> float:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 4, *latent, generator=g)
    ctx = torch.randn(batch, 154, unet.config.cross_attention_dim, generator=g)
    t = torch.full((batch,), 500)
    extra = {}
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text embedding and the six size ids
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280, generator=g),
                                      "time_ids": torch.tensor([[8.0 * latent[0], 8.0 * latent[1], 0, 0,
                                                                 8.0 * latent[0], 8.0 * latent[1]]] * batch)}
    t0 = time.perf_counter()
    unet(x, t, ctx, **extra).sample.float().square().mean().backward()
    return time.perf_counter() - t0


def measure(mode: str, args) -> dict:
    import torch._dynamo as dynamo

    dynamo.reset()
    compiling.reset_dynamo_counters()
    unet, net = build_unet(args.network, args.checkpointing, args.model)
    kw = {"backend": args.backend, "dynamic": mode == "dynamic"}
    if mode == "whole":
        unet.compile(**kw)
    elif mode in ("regional", "dynamic"):
        if mode == "dynamic":
            compiling.dynamic_shapes()  # as a run with torch_compile_dynamic
        n = compiling.compile_regions(unet, compiling.UNET_REGIONS, **kw)
        dynamo.config.recompile_limit = max(dynamo.config.recompile_limit, n * len(args.latents))
        dynamo.config.accumulated_cache_size_limit = max(dynamo.config.accumulated_cache_size_limit,
                                                         4 * n * len(args.latents))
    firsts = [step(unet, args.batch, latent) for latent in args.latents]
    second = step(unet, args.batch, args.latents[0])
    grads = sum(p.grad.double().abs().sum().item() for p in net.parameters() if p.grad is not None)
    return {"mode": mode, "first_s": sum(firsts), "firsts": firsts, "second_s": second,
            "graphs": compiling.unique_graphs(), "regions": compiling.compiled_regions(unet), "grad_sum": grads}


def latent_shape(text: str) -> tuple[int, int]:
    h, _, w = text.lower().partition("x")
    return int(h), int(w or h)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="aot_eager")
    ap.add_argument("--network", default="lora", choices=["lora", "loha"])
    ap.add_argument("--model", default="sd15", choices=["sd15", "sdxl"],
                    help="sdxl: the full-size SDXL UNet (10 GB of float32 weights), 70 transformer blocks")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--latents", nargs="+", type=latent_shape, default=[(16, 16)],
                    help="latent sizes, H or HxW (16 = 128 px images); several: one bucket after another")
    ap.add_argument("--modes", nargs="*", default=["eager", "whole", "regional"],
                    choices=["eager", "whole", "regional", "dynamic"])
    ap.add_argument("--cache-dir", help="inductor's cache folder (default: a fresh one per mode); run the same "
                                        "command twice with one folder to time a second run's compile")
    args = ap.parse_args()
    sizes = ", ".join(f"{h}x{w}" for h, w in args.latents)
    print(f"{'SDXL' if args.model == 'sdxl' else 'SD1.5'} UNet + {args.network}, backend {args.backend}, batch {args.batch}, latents {sizes}, "
          f"checkpointing {args.checkpointing}, torch {torch.__version__}, "
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
        each = " + ".join(f"{t:.1f}" for t in r["firsts"]) if len(r["firsts"]) > 1 else ""
        print(f"{mode:9s} first fwd+bwd {r['first_s']:7.1f} s {each}  second {r['second_s']:6.2f} s   "
              f"graphs {r['graphs']:3d}   compiled modules {r['regions']:3d}   grad sum {r['grad_sum']:.6e}",
              flush=True)
    by = {r["mode"]: r for r in rows}
    if "eager" in by:
        for mode in ("whole", "regional", "dynamic"):
            if mode in by:
                over = by[mode]["first_s"] - by["eager"]["first_s"]
                by[mode]["overhead"] = over
                print(f"{mode:9s} compile overhead (first step - eager first step) {over:7.1f} s")
    if "dynamic" in by and "regional" in by:
        key = "overhead" if "overhead" in by["regional"] else "first_s"
        print(f"ratio regional static / dynamic ({key}): "
              f"{by['regional'][key] / max(1e-9, by['dynamic'][key]):.2f}x")
    if "whole" in by and "regional" in by:
        key = "overhead" if "overhead" in by["whole"] else "first_s"
        print(f"ratio whole / regional ({key}): {by['whole'][key] / max(1e-9, by['regional'][key]):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
