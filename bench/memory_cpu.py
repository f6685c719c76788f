"""Memory proxy on the CPU (issue 18): what a training step holds, lorakit vs a plain UNet step.

The full-size SD1.5 UNet (random weights, lorakit/models/configs/sd15), base weights in bf16 under
bf16 autocast with fp32 adapters (as a bf16 run), one forward+backward at batch 1 and `--latent`
x `--latent` latents, with gradient checkpointing (as the seeds) or without (`--no-checkpointing`:
everything a step saves shows). Rows: the frozen UNet with the input requiring grad (the floor),
lorakit LoRA rank 8, lorakit LoHa dim 8 / conv 8 (seed A's adapter); `loha-held` is LoHa without
the checkpointed merged weights outside diffusers' blocks (train/speed.py recompute_merged_weights).

Columns:
- saved: bytes autograd saves for backward over the forward (torch.autograd.graph.saved_tensors_hooks,
  each storage counted once, the model's and the adapters' parameters not counted: they exist anyway). Under
  non-reentrant checkpointing the blocks' saves go to the checkpoint, so this is what stays held
  across the step outside the checkpointed blocks.
- block peak: the largest bytes saved by one checkpointed block's recompute in backward (the
  transient on top of `saved`), read with the same hooks nested inside the checkpoint's;
- opt state: optimizer state bytes after one step (AdamW for LoRA, DAdaptation for LoHa as seed A);
- ratio: (saved + block peak) / the plain UNet's.

    OMP_NUM_THREADS=2 nice -n 10 python bench/memory_cpu.py                 # ~2 min on 2 cores
    OMP_NUM_THREADS=2 nice -n 10 python bench/memory_cpu.py --no-checkpointing --latent 8
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.config.load import load_config  # noqa: E402
from lorakit.models.configs_data import config_folder  # noqa: E402

MB = 2 ** 20


class SavedBytes:
    """Bytes saved for backward while active (storages counted once, parameters excluded)."""

    def __init__(self, exclude: set[int]):
        self.exclude, self.seen, self.total = exclude, set(), 0

    def pack(self, t: torch.Tensor):
        s = t.untyped_storage()
        key = s.data_ptr()
        if key not in self.exclude and key not in self.seen:
            self.seen.add(key)
            self.total += s.nbytes()
        return t

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def recompute_peak(exclude: set[int]):
    """Patch torch.utils.checkpoint so each recompute's saves are counted; returns (peaks, context)."""
    import torch.utils.checkpoint as cp

    peaks: list[int] = []
    original = cp._recomputation_hook

    class Counting(original):  # the recompute's own hooks, with each saved tensor counted too
        def __init__(self, target_frame_ref, gid):
            super().__init__(target_frame_ref, gid)
            counter = SavedBytes(exclude)
            peaks.append(0)
            inner_pack = self.pack_hook

            def pack(t):
                counter.pack(t)
                peaks[-1] = counter.total
                return inner_pack(t)
            self.pack_hook = pack

    @contextlib.contextmanager
    def patched():
        cp._recomputation_hook = Counting
        try:
            yield
        finally:
            cp._recomputation_hook = original
    return peaks, patched()


def build(kind: str, checkpointing: bool, args_held: bool = False):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads((config_folder(False, False) / "unet" / "config.json").read_text()))
    unet.requires_grad_(False)
    unet.to(torch.bfloat16)
    params, opt = [], None
    if kind != "plain":
        from lorakit.adapters.network import create_network
        from lorakit.optim.optimizers import build_optimizer

        values = {"network_type": kind, "network_dim": 8, "network_alpha": 8, "network_train_unet_only": True,
                  "optimizer_type": "AdamW" if kind == "lora" else "DAdaptation",
                  "learning_rate": 1e-4 if kind == "lora" else 1.0}
        if kind == "loha":
            values.update(conv_dim=8, conv_alpha=8)
        cfg = load_config(None, [], values)
        net = create_network(cfg, unet, None)
        net.apply()
        params = [p for p in net.parameters() if p.requires_grad]
        opt = build_optimizer(cfg, net.param_groups(cfg.resolved_text_encoder_lr(), cfg.resolved_unet_lr()))
    if checkpointing:
        from lorakit.train.speed import checkpoint_transformer_units

        unet.enable_gradient_checkpointing()
        checkpoint_transformer_units(unet)  # as training does: the SD1.5 units whole
        if kind != "plain" and not args_held:  # as training does (lorakit/train/speed.py)
            from lorakit.train.speed import recompute_merged_weights

            recompute_merged_weights(unet, net.unet_modules.values())
    unet.train()
    return unet, params, opt


def measure(kind: str, args) -> dict:
    unet, params, opt = build(kind.removesuffix("-held"), not args.no_checkpointing, kind.endswith("-held"))
    exclude = {p.untyped_storage().data_ptr() for p in [*unet.parameters(), *params]}  # they exist anyway
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, args.latent, args.latent, generator=g, requires_grad=kind == "plain")
    ctx = torch.randn(1, 154, 768, generator=g)
    saved = SavedBytes(exclude)
    peaks, patched = recompute_peak(exclude)
    with torch.autocast("cpu", torch.bfloat16), saved.hooks():
        loss = unet(x, torch.full((1,), 500), ctx).sample.float().square().mean()
    with patched:
        loss.backward()
    state = 0
    if opt is not None:
        opt.step()
        state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                    if torch.is_tensor(v))
    return {"kind": kind, "saved": saved.total, "block_peak": max(peaks, default=0), "opt_state": state,
            "params": sum(p.numel() * p.element_size() for p in params), "loss": loss.item()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latent", type=int, default=16)
    ap.add_argument("--no-checkpointing", action="store_true")
    ap.add_argument("--kinds", nargs="*", default=["plain", "lora", "loha"])
    args = ap.parse_args()
    print(f"SD1.5 UNet, bf16 weights + autocast, batch 1, {args.latent}x{args.latent} latents, checkpointing "
          f"{not args.no_checkpointing}, torch {torch.__version__}", flush=True)
    print(f"{'model':8s} {'saved MB':>9s} {'block peak MB':>14s} {'opt state MB':>13s} {'adapter MB':>11s} "
          f"{'ratio':>7s}", flush=True)
    base = None
    for kind in args.kinds:
        r = measure(kind, args)
        held = r["saved"] + r["block_peak"]
        base = base or held
        print(f"{kind:8s} {r['saved'] / MB:9.1f} {r['block_peak'] / MB:14.1f} {r['opt_state'] / MB:13.1f} "
              f"{r['params'] / MB:11.1f} {held / base:6.2f}x   loss {r['loss']:.6f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
