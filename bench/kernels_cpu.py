"""Compute ops per training step, by phase, against the adapter-free work of the same step (CPU proxy).

At batch 1 a GPU step is bound by kernel launches, so the number of ops that launch a kernel is
the figure to drive down. This counts, with a dispatch mode, every aten op of one optimizer step
(the third) of lorakit.train() on the tiny model, except views and metadata ops (detach, view, t,
transpose, ...: no kernel on a GPU) and scalar reads; each op counted is about one kernel on a GPU
(inductor aside). The phases: text encoder, latents, UNet forward (loss included), backward
(checkpoint recompute included), optimizer, and the rest (noise, loss bookkeeping, clipping).

The reference is the work no adapter can avoid: the same text-encoder forward (no grad), the same
UNet forward with gradient checkpointing and its backward to the input latents, counted the same
way. The ratio lorakit / reference is the overhead an adapter step adds in kernels (the adapters'
own forward and backward, the text encoder's backward when it trains, the optimizer).

Torch's AdamW runs with foreach=True here, what it picks on a GPU (on the CPU it would loop per
tensor). Prodigy / DAdaptation rows use lorakit's foreach implementation.

    .venv/bin/python bench/kernels_cpu.py              # about 1 minute on 2 cores
    .venv/bin/python bench/kernels_cpu.py --configs lora_b1 --by-op
    python bench/kernels_cpu.py --cuda                  # GPU machine: the launches the proxy stands for
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_bench as tb  # noqa: E402

import lorakit.train.loop as loop  # noqa: E402
from lorakit.config.load import load_config  # noqa: E402

NO_KERNEL = {"_unsafe_view", "lift_fresh", "_local_scalar_dense", "_record_function_enter_new",
             "_record_function_exit", "empty", "empty_strided"}
FAST = {"implementation": "fast"}
CONFIGS = {  # name -> (train_bench config, overrides); LoRA at alpha = dim and at kohya's alpha 1
    "lora_b1": ("lora_b1", {"optimizer_args": {"foreach": True}}),
    "lora_b1_alpha1": ("lora_b1", {"network_alpha": 1, "optimizer_args": {"foreach": True}}),
    "lora_b1_unet_cached_te": ("lora_b1", {"optimizer_args": {"foreach": True}, "network_train_unet_only": True,
                                           "cache_text_encoder_outputs": True}),
    "seed_a_b1": ("seed_a_b1", {"optimizer_args": FAST}),
    "seed_b_ia3_b1": ("seed_b_ia3_b1", {"optimizer_args": FAST}),
    "lokr_b1": ("lokr_b1", {"optimizer_args": FAST}),
}


class Ops(TorchDispatchMode):
    """Counts kernel-launching aten ops by (phase, op); the phase is set by the wrapped loop calls."""

    def __init__(self, phase: list[str]):
        super().__init__()
        self.phase, self.count = phase, collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (func.is_view or name in NO_KERNEL):
            backward = torch._C._current_graph_task_id() != -1
            self.count[("backward" if backward else self.phase[0], name)] += 1
        return func(*args, **(kwargs or {}))


def phased(phase: list[str]) -> None:
    """Label the ops of the loop's parts with their phase (while a count runs)."""
    for attr, label in (("encode_prompts", "text encoder"), ("batch_latents", "latents"),
                        ("sample_losses", "unet forward"), ("optimizer_step", "optimizer")):
        f = getattr(loop, attr)

        def wrapped(*a, _f=f, _label=label, **k):
            old, phase[0] = phase[0], _label
            try:
                return _f(*a, **k)
            finally:
                phase[0] = old
        setattr(loop, attr, wrapped)


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cudaGraphLaunch")


def count_step(values: dict, phase: list[str], launches: list[int] | None = None) -> collections.Counter:
    """The ops of the third step; with `launches` (CUDA) also its kernel launches, appended there."""
    mode = Ops(phase)
    # the launch calls are CUDA runtime events, recorded with the CUDA activity (CUPTI)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    prof = torch.profiler.profile(activities=activities) if launches is not None else None

    def on(ev):
        if ev.kind == "step" and ev.step == 2:
            if prof is not None:
                torch.cuda.synchronize()
                prof.__enter__()
            mode.__enter__()
        elif ev.kind == "step" and ev.step == 3:
            mode.__exit__(None, None, None)
            if prof is not None:
                torch.cuda.synchronize()
                prof.__exit__(None, None, None)
                launches.append(sum(e.name in LAUNCHES for e in prof.events()))
    loop.train(load_config(None, [], {**values, "max_train_steps": 3}), [on], overwrite=True)
    return mode.count


def count_reference(model: Path, tokens: int, phase: list[str]) -> collections.Counter:
    """Text encoder forward (no grad), UNet forward with checkpointing and backward to the input."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet").requires_grad_(False)
    te = CLIPTextModel.from_pretrained(model / "text_encoder").requires_grad_(False)
    unet.enable_gradient_checkpointing()
    unet.train()
    chunks = -(-(tokens - 2) // 75)  # 75-token chunks through the encoder, as max_token_length does
    ids = torch.zeros(chunks, 77, dtype=torch.long)
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    t = torch.randint(0, 1000, (1,))
    mode = Ops(phase)
    with mode:
        phase[0] = "text encoder"
        with torch.no_grad():
            ctx = te(ids).last_hidden_state.reshape(1, -1, te.config.hidden_size)[:, :tokens]
        phase[0] = "unet forward"
        loss = unet(x, t, ctx).sample.float().pow(2).mean()
        loss.backward()
    phase[0] = "other"
    return mode.count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--by-op", action="store_true", help="also the 8 most frequent ops of each phase")
    ap.add_argument("--cuda", action="store_true",
                    help="on the GPU in bf16: also count the step's CUDA kernel launches (torch profiler)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    phase = ["other"]
    phased(phase)
    phases = ["text encoder", "latents", "unet forward", "backward", "optimizer", "other"]
    device = torch.cuda.get_device_name() if args.cuda else "cpu"
    print(f"compute ops per step (tiny model, 64 px, batch 1, {'bf16' if args.cuda else 'fp32'}, checkpointing, "
          f"{device}, torch {torch.__version__})")
    print(f"{'config':24s}" + "".join(f"{p[:12]:>13s}" for p in phases) + f"{'total':>8s}{'x ref':>7s}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model, data = tb.model_and_data(tmp, True)
        ref = count_reference(model, 152, phase)  # 150 tokens + BOS/EOS, as max_token_length 150 encodes
        rows = [("reference (no adapter)", ref)]
        for name in args.configs:
            base, overrides = CONFIGS[name]
            seed = tb.config_values(base, model, data, tmp, True, 1, 2, {})
            values = {**seed, **overrides}
            if "optimizer_args" in overrides:  # added to the config's own (the seeds' decouple, d0, ...)
                values["optimizer_args"] = {**(seed.get("optimizer_args") or {}), **overrides["optimizer_args"]}
            if args.cuda:
                values["mixed_precision"] = "bf16"
            launches: list[int] | None = [] if args.cuda else None
            rows.append((name, count_step(values, phase, launches)))
            if launches:
                print(f"{name}: {launches[0]} CUDA kernel launches in the step", flush=True)
        total_ref = sum(ref.values())
        for name, c in rows:
            by = collections.Counter()
            for (p, _), v in c.items():
                by[p] += v
            total = sum(by.values())
            print(f"{name:24s}" + "".join(f"{by[p]:13d}" for p in phases) + f"{total:8d}{total / total_ref:6.2f}x",
                  flush=True)
            if args.by_op:
                for p in phases:
                    top = sorted(((v, op) for (pp, op), v in c.items() if pp == p), reverse=True)[:8]
                    if top:
                        print(f"    {p}: " + ", ".join(f"{op} {v}" for v, op in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
