"""Host time of one training step with SD1.5's topology and tiny widths: what a launch-bound GPU step waits for.

At batch 1 a GPU step is bound by the host: on an H200, 2 TFLOP of UNet work (a few ms of compute)
took 0.39-0.98 s per step (issue 18). The host's part is a cost per op and per module call, not per
FLOP, so this runs SD1.5's exact topology -- the UNet's blocks, layers and attention, CLIP-L's 12
layers, so the same modules, adapters and ops as SD1.5 -- at widths of 32-64 channels, 8x8 latents
and batch 1, where the CPU's compute is a few microseconds per op, about a CUDA launch. (The meta
device was tried first: its shape functions are Python and cost more than the ops they stand for.)
The ratio to the plain model is the overhead an adapter step adds on the host.

Rows: `plain` is the frozen model with the input latents requiring grad (the work no adapter
avoids); the others train an adapter with torch's AdamW (foreach, the GPU's choice), or the
optimizer named. Gradient checkpointing on, as the seeds train. Columns: milliseconds per step for
the text encoder's forward (its backward, when it trains, is inside `backward`), the UNet forward
(loss included), the backward, the optimizer and max-norm (`scale_weight_norms`, where the config
sets it: now, and the old build-every-delta way for comparison). The total and the ratio leave the
optimizer out: on the CPU a foreach op loops over its tensors one by one, where CUDA runs one fused
kernel per chunk of them, so the CPU's optimizer time says nothing about a GPU's. The widths are not
quite free either: LoHa and LoKr build each merged weight (64 x 576 for a 3x3 conv), a few tens of
microseconds of real compute per layer here.

    OMP_NUM_THREADS=1 python bench/host_cpu.py                  # about 2 minutes
    OMP_NUM_THREADS=1 python bench/host_cpu.py --kinds plain lora --repeat 20
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.config.load import load_config  # noqa: E402
from lorakit.models.configs_data import config_folder  # noqa: E402

FAST = {"optimizer_args": {"implementation": "fast"}, "learning_rate": 1.0}
KINDS = {  # name -> config values (None: no adapter); the seeds' adapters and optimizers
    "plain": None,
    "lora": {"network_type": "lora", "network_dim": 8, "network_alpha": 8},
    "lora_unet": {"network_type": "lora", "network_dim": 8, "network_alpha": 8, "network_train_unet_only": True},
    "loha_seed_a": {"network_type": "loha", "network_dim": 8, "network_alpha": 8, "conv_dim": 8, "conv_alpha": 8,
                    "optimizer_type": "DAdaptation", **FAST},
    "lokr_seed": {"network_type": "lokr", "network_dim": 1024, "network_alpha": 1024, "conv_dim": 512,
                  "conv_alpha": 512, "scale_weight_norms": 1.0, "optimizer_type": "Prodigy", **FAST},
    "ia3_seed_b": {"network_type": "ia3", "network_args": {"train_on_input": True}, "scale_weight_norms": 1.0,
                   "optimizer_type": "Prodigy", **FAST},
}


NARROW_UNET = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "attention_head_dim": 8}
NARROW_TE = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "projection_dim": 32}


def build(kind: str):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = config_folder(False, False)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config({**json.loads((folder / "unet" / "config.json").read_text()),
                                             **NARROW_UNET})
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder", **NARROW_TE))
    unet.requires_grad_(False)
    te.requires_grad_(False)
    unet.enable_gradient_checkpointing()
    from lorakit.train.speed import checkpoint_transformer_units

    checkpoint_transformer_units(unet)  # as training does
    unet.train()
    values = KINDS[kind]
    net = opt = cfg = None
    if values is not None:
        from lorakit.adapters.network import create_network
        from lorakit.optim.optimizers import build_optimizer
        from lorakit.train.speed import recompute_merged_weights

        cfg = load_config(None, [], {"learning_rate": 1e-4, **values})
        net = create_network(cfg, unet, te)
        net.apply()
        net.train()
        recompute_merged_weights(unet, net.unet_modules.values())  # as training does
        groups = net.param_groups(cfg.resolved_text_encoder_lr(), cfg.resolved_unet_lr())
        opt = (torch.optim.AdamW(groups, lr=1e-4, foreach=True) if cfg.optimizer_type == "AdamW"
               else build_optimizer(cfg, groups))
        te.train(net.train_text_encoder)
    return unet, te, net, opt, cfg


def step(unet, te, net, opt, cfg) -> dict[str, float]:
    """One step; seconds per phase."""
    t = {}
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 49408, (1, 77), generator=g)
    x = torch.randn(1, 4, 8, 8, generator=g, requires_grad=net is None)
    t0 = time.perf_counter()
    trains_te = net is not None and net.train_text_encoder
    with torch.set_grad_enabled(trains_te):
        ctx = te(ids)[0]
    t1 = time.perf_counter()
    loss = unet(x, torch.full((1,), 500), ctx).sample.float().square().mean()
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    t.update(te=t1 - t0, forward=t2 - t1, backward=t3 - t2)
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)
    t4 = time.perf_counter()
    t["optimizer"] = t4 - t3
    if cfg is not None and cfg.scale_weight_norms:
        net.delta_norms().tolist()
        t5 = time.perf_counter()
        with torch.no_grad():  # what max-norm did before frobenius.py: every delta W built
            torch.stack([m.delta_weight().float().norm() for m in net.max_norm_modules()]).tolist()
        t["max_norm"], t["max_norm_before"] = t5 - t4, time.perf_counter() - t5
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kinds", nargs="*", default=list(KINDS))
    ap.add_argument("--repeat", type=int, default=10, help="timed steps per row, after two warm-up steps")
    args = ap.parse_args()
    print(f"host ms per step, SD1.5 topology at tiny widths (batch 1, 8x8 latents, checkpointing), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeat} "
          "(rows taken in turn)", flush=True)
    cols = ("te", "forward", "backward", "optimizer", "max_norm", "max_norm_before")
    print(f"{'row':12s}" + "".join(f"{c:>16s}" for c in cols) + f"{'total*':>10s}{'x plain':>9s}", flush=True)
    built = {kind: build(kind) for kind in args.kinds}
    for parts in built.values():
        for _ in range(2):  # warm-up: first-call caches, the optimizer's state
            step(*parts)
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in built}
    for _ in range(args.repeat):  # round robin: a change in the machine's load touches every row alike
        for kind, parts in built.items():
            gc.collect()
            gc.disable()  # no collector pause inside a timed step
            try:
                runs[kind].append(step(*parts))
            finally:
                gc.enable()
    base = None
    for kind in built:
        med = {c: statistics.median(r[c] for r in runs[kind]) * 1e3 for c in cols if c in runs[kind][0]}
        total = sum(v for c, v in med.items() if c not in ("optimizer", "max_norm_before"))
        base = base or total
        print(f"{kind:12s}" + "".join(f"{med[c]:16.1f}" if c in med else f"{'-':>16s}" for c in cols)
              + f"{total:10.1f}{total / base:8.2f}x", flush=True)
    print("* total without the optimizer and the old max-norm (module doc)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
