"""Peak device memory of a training step, predicted on the CPU (issue 18): no GPU, no compute.

The bench configs (bench/train_bench.py: the seeds and LoRA, full-size SD1.5 with random weights,
bf16, gradient checkpointing, 150 tokens) go through lorakit's own setup and two of lorakit's own
training steps, with every tensor fake (torch's FakeTensorMode: shapes, dtypes and aliasing, no
data). A dispatch mode adds up the bytes of the tensors alive at each op, each storage once and
rounded as the CUDA caching allocator rounds (512 bytes), and keeps the peak: what
`torch.cuda.max_memory_allocated` reports for the same step, less the library workspaces (cuBLAS,
cuDNN, flash attention) that no tensor owns. A third step, outside that count, gives the FLOPs of
a step (torch's FlopCounterMode: matmuls, convolutions, attention; checkpoint recompute included).

What differs from a CUDA run, and how it is handled:
- CPU autocast runs group_norm and layer_norm in bfloat16, CUDA autocast in float32 (their inputs
  are saved for backward in float32 there): both are wrapped to cast to float32 under autocast;
- host reads (`.item()`, `.tolist()`) have no value on a fake tensor: they read 1e-3 (1 for
  integers), which changes no shape;
- the noise is drawn for real on the CPU, as lorakit does, then made fake;
- the VAE: lorakit keeps it on the host after caching latents (from c2dacf4); for an older
  checkout, `--vae-on-device` adds its bytes.

Checked against the H200 rows of performance-anchors.md, lorakit at 69f0d5b
(`--lorakit <checkout of 69f0d5b> --vae-on-device`), peak allocated in GiB:

    config       predicted  measured  measured - predicted
    lora_b1        2.506      2.60       +0.09
    lora_b15       6.846      6.94       +0.09
    seed_a_b1      3.385      3.47       +0.08
    seed_a_b15     8.073      8.15       +0.08
    lokr_b1        3.095      2.92       -0.18
    seed_b_ia3_b1  2.409      2.51       +0.10

    python bench/peak_cpu.py --workdir /tmp/bench                     # every SD1.5 row, ~40 s each
    python bench/peak_cpu.py --configs seed_a_b15 --top 20 --workdir /tmp/bench
    python bench/peak_cpu.py --lorakit /path/to/old/checkout --vae-on-device --configs lora_b15

--workdir keeps the model (4 GB) and the images between calls (bench/train_bench.py builds them).
--top N lists the largest groups of tensors alive at the peak: the op that made them, dtype, phase.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import weakref
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIVE = None  # the tracker of the step being predicted (moves to and from the host change it)
HOSTED: set[int] = set()  # modules moved to the host


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=["lora_b1", "lora_b15", "seed_a_b1", "seed_a_b15", "lokr_b1",
                                                     "seed_b_ia3_b1"])
    ap.add_argument("--workdir", required=True, help="the model and images (built on the first call)")
    ap.add_argument("--lorakit", help="import lorakit from this checkout instead (to compare commits)")
    ap.add_argument("--vae-on-device", action="store_true", help="count the VAE (checkouts before c2dacf4)")
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="also one JSON line per config, in bytes")
    ap.add_argument("--tiny", action="store_true", help="the tiny models at 64 px in float32 (train_bench.py --cpu's "
                                                        "setting): a check of this script, in seconds")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, args.lorakit or str(HERE.parent))
    import lorakit  # before train_bench, which puts this checkout first on the path

    from torch._subclasses.fake_tensor import FakeTensorMode

    print(f"lorakit from {Path(lorakit.__file__).parent}", flush=True)
    fm = FakeTensorMode(allow_non_fake_inputs=True)
    cuda_autocast_norms()
    fake_everything(fm)
    for name in args.configs:
        report(name, predict(name, Path(args.workdir), fm, args.tiny), args)
    return 0


def rounded(n: int) -> int:
    return 0 if n == 0 else max(512, (n + 511) // 512 * 512)  # the CUDA caching allocator's unit


def live_bytes_mode():
    """A dispatch mode that tracks every tensor an op returns until its storage is freed."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}
            self.info: dict[int, tuple] = {}
            self.refs: dict[int, weakref.ref] = {}
            self.cur = self.peak = 0
            self.phase, self.at_peak, self.peak_live, self.peak_info = "", "", {}, {}

        def track(self, t, made_by="parameter"):
            if not isinstance(t, torch.Tensor):
                return
            st = t.untyped_storage()
            key = st._cdata
            if key in self.live:
                return
            self.live[key] = rounded(st.nbytes())
            self.info[key] = (str(made_by).replace("aten.", "").removesuffix(".default"),
                              str(t.dtype).removeprefix("torch."), self.phase)
            self.refs[key] = weakref.ref(st, lambda _, k=key: self.free(k))
            self.cur += self.live[key]
            if self.cur > self.peak:
                self.peak, self.at_peak = self.cur, self.phase
                self.peak_live, self.peak_info = dict(self.live), dict(self.info)

        def free(self, key):
            self.cur -= self.live.pop(key, 0)
            self.info.pop(key, None)
            self.refs.pop(key, None)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:  # a host read: no value to read
                return 1e-3 if args[0].is_floating_point() else 1
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                self.track(t, func)
            return out
    return Live()


def cuda_autocast_norms() -> None:
    """group_norm and layer_norm in float32 under autocast, as CUDA autocast runs them."""
    import torch
    import torch.nn.functional as F

    def fp32(fn):
        def wrapped(*args, **kwargs):
            if not torch.is_autocast_enabled("cpu"):
                return fn(*args, **kwargs)
            up = lambda v: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v  # noqa: E731
            with torch.autocast("cpu", enabled=False):
                return fn(*map(up, args), **{k: up(v) for k, v in kwargs.items()})
        return wrapped
    F.group_norm, F.layer_norm = fp32(F.group_norm), fp32(F.layer_norm)


def fake_everything(fm) -> None:
    """Models load for real and become fake; module moves stay fake; noise is drawn for real."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily

    import lorakit.models.loader as loader
    import lorakit.train.noise as noise
    import lorakit.transfer as transfer

    def empty_like(t, dtype=None, memory_format=None):
        with fm:
            if memory_format is not None and t.dim() == 4:
                return torch.empty(t.shape, dtype=dtype or t.dtype, memory_format=memory_format)
            return torch.empty_strided(t.shape, t.stride(), dtype=dtype or t.dtype)

    def swap(module, convert):
        for mod in module.modules():
            for k, p in mod._parameters.items():
                if p is not None and (q := convert(p)) is not p:
                    mod._parameters[k] = torch.nn.Parameter(q, requires_grad=p.requires_grad)
            for k, b in mod._buffers.items():
                if b is not None:
                    mod._buffers[k] = convert(b)

    real_load = loader.load_sd_model

    def load(*args, **kwargs):
        with unset_fake_temporarily():
            m = real_load(*args, **kwargs)
        for part in (m.unet, m.vae, m.text_encoder, getattr(m, "text_encoder_2", None)):
            if part is not None:
                swap(part, empty_like)
        return m
    loader.load_sd_model = load

    real_to = torch.nn.Module.to

    def keys(module):
        return [t.untyped_storage()._cdata for t in [*module.parameters(), *module.buffers()]]

    def to(self, *args, **kwargs):  # nn.Module.to would swap_tensors, which fake parameters refuse
        if not any(isinstance(p, FakeTensor) for p in self.parameters()):
            return real_to(self, *args, **kwargs)
        device, dtype, _, fmt = torch._C._nn._parse_to(*args, **kwargs)
        before = keys(self)

        def convert(t):  # a new tensor only where a real move would copy: another dtype or memory format
            if fmt is None and (dtype is None or not t.is_floating_point() or t.dtype == dtype):
                return t
            return empty_like(t, dtype if dtype is not None and t.is_floating_point() else None, fmt)
        swap(self, convert)
        if LIVE is None:
            return self
        if device == transfer.HOST:  # to the host: its tensors no longer count
            for key in before + keys(self):
                LIVE.free(key)
            HOSTED.add(id(self))
        elif device is not None and id(self) in HOSTED:  # back to the device
            HOSTED.discard(id(self))
            for t in [*self.parameters(), *self.buffers()]:
                LIVE.track(t)
        return self
    torch.nn.Module.to = to
    # the device and the host are both the CPU here: a move to the host goes to "meta" by name, and a
    # module there says so
    transfer.HOST = torch.device("meta")
    real_module_device = transfer.module_device
    transfer.module_device = lambda m: transfer.HOST if id(m) in HOSTED else real_module_device(m)

    real_sample_one = noise.sample_one

    def sample_one(*args, **kwargs):
        with unset_fake_temporarily():
            n, i, t = real_sample_one(*args, **kwargs)
        return fm.from_tensor(n), fm.from_tensor(i), t
    noise.sample_one = sample_one


def predict(name: str, work: Path, fm, tiny: bool = False) -> dict:
    global LIVE
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import train_bench as tb
    from lorakit.config.load import load_config
    from lorakit.events import EventBus
    from lorakit.train import loop
    from lorakit.train.loop import train_step
    from lorakit.train.setup import setup_run

    model, data = tb.model_and_data(work, tiny, sdxl=name in tb.SDXL_CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [], tb.config_values(name, model, data, Path(tmp), tiny, 2, 0, {}))
        with fm:
            run = setup_run(cfg, EventBus(), overwrite=True)
            live = live_bytes_mode()
            m = run.model  # text_encoders: SD and SDXL alike (an older checkout has text_encoder only)
            encoders = getattr(m, "text_encoders", None) or (m.text_encoder,)
            models = (m.unet, *encoders, run.network)
            hosted = run.text.on_host if hasattr(run.text, "on_host") else False  # setup left them there
            HOSTED.update(id(e) for e in encoders if hosted)
            for t in (t for m in models if id(m) not in HOSTED for t in [*m.parameters(), *m.buffers()]):
                live.track(t)
            # frozen encoders with every caption cached go to the host, as in a run (where it has this):
            # the prefill runs with them on the device and the UNet on the host, its rows stay there
            offload = getattr(loop, "place_text_encoders", None)
            LIVE = live
            with live:
                live.phase = "caption prefill"
                on_host = offload(run, 1) if offload is not None else False
            vae = sum(rounded(t.untyped_storage().nbytes()) for t in run.model.vae.state_dict().values())
            bs = cfg.train_batch_size
            plan = run.dataset.batch_plan(1, bs, run.seed)  # epochs count from 1, as in the loop
            with live:
                for k in range(2):  # the second step holds the optimizer state
                    live.phase = f"step {k + 1}"
                    batch = run.dataset.make_batch(plan[k % len(plan)], 1, run.seed)
                    train_step(run, [(batch, k * bs)], len(batch.captions), 1)
            # a third step's FLOPs, checkpoint recompute included, outside the count of bytes (the
            # counter holds tensors of its own)
            with live_bytes_mode(), FlopCounterMode(display=False) as flops:  # a fresh count; reads answered
                train_step(run, [(batch, 2 * bs)], len(batch.captions), 1)
            frozen = {t.untyped_storage()._cdata for m in models for t in m.parameters() if not t.requires_grad}
            state = {v.untyped_storage()._cdata for s in run.optimizer.state.values() for v in s.values()
                     if isinstance(v, torch.Tensor)}
    split = collections.Counter()
    for key, nb in live.peak_live.items():
        split["frozen weights" if key in frozen else "optimizer state" if key in state
              else "adapters" if live.peak_info[key][0] == "parameter" else "activations, grads, temporaries"] += nb
    return {"peak": live.peak, "at": live.at_peak, "vae": vae, "split": split, "on_host": on_host,
            "tflop": flops.get_total_flops() / 1e12,
            "live": live.peak_live, "info": live.peak_info}


def report(name: str, r: dict, args) -> None:
    gib = 2 ** 30
    peak = r["peak"] + (r["vae"] if args.vae_on_device else 0)
    parts = ", ".join(f"{k} {v / gib:.3f}" for k, v in r["split"].most_common())
    print(f"{name:14s} predicted peak {peak / gib:6.3f} GiB ({r['at']}), step {r['tflop']:.3f} TFLOP  {parts}"
          + (f", VAE {r['vae'] / gib:.3f}" if args.vae_on_device else "")
          + ("; text encoders on the host" if r["on_host"] else ""), flush=True)
    if args.json:
        print(json.dumps({"config": name, "peak": peak, "at": r["at"], "tflop": r["tflop"], "split": dict(r["split"]),
                          "on_host": r["on_host"]}),
              flush=True)
    if args.top:
        groups, counts = collections.Counter(), collections.Counter()
        for key, nb in r["live"].items():
            groups[r["info"][key]] += nb
            counts[r["info"][key]] += 1
        for (op, dtype, phase), nb in groups.most_common(args.top):
            print(f"    {nb / 2**20:8.1f} MiB  {counts[(op, dtype, phase)]:5d} x {op:40s} {dtype:9s} {phase}")


if __name__ == "__main__":
    sys.exit(main())
