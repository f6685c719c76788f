"""Training-speed benchmark: the seed configs and LoRA + AdamW, measured through lorakit.train().

GPU mode (default when CUDA is there): an SD1.5-architecture model with random weights built from
the shipped config folder (no download), 20 synthetic 512x512 images in `10_subject`, bf16,
cached latents, gradient checkpointing, TE trained, 150 tokens -- the setting of
shared/reference/performance-anchors.md. Prints per config: img/s, step-time median and p90,
peak VRAM and MFU (UNet forward 0.677 TFLOP at 512 px, 0.859 at 576; backward to the inputs
about the same; checkpointing one more forward; H100 bf16 peak 798 TFLOP/s).

SDXL rows (sdxl_lora_b1, sdxl_lora_b4; issue 16): a full-size SDXL base with random weights built from
the shipped config folder (lorakit/models/configs/sdxl), the same images at 1024 px, bf16, gradient
checkpointing, UNet-only LoRA with the text-encoder outputs cached (kohya's SDXL setting). Targets
on one H100/H200: >= 1.85 img/s at batch 1, peak <= 11 GB. No MFU (no FLOP count of SDXL's UNet here).

CPU mode (--cpu, every session can run it): the tiny model (SDXL rows: the tiny SDXL) at 64 px; prints the same columns
plus the overhead ratio: lorakit's step time over a plain UNet forward+backward of the same
batch, and the profiler-event count of one training step over the plain UNet's (views and nested
events included, against a UNet without checkpointing or text encoder). The kernel count to drive
down is bench/kernels_cpu.py's: kernel-launching ops by phase against the adapter-free work of the
same step.

    python bench/train_bench.py --cpu                 # about 2 minutes on 2 cores
    python bench/train_bench.py --configs lora_b1 seed_a_b15
    python bench/train_bench.py --configs lora_b15 --set network_train_unet_only=true
    python bench/train_bench.py --configs lora_b1 lora_b15 --levers   # each speed lever alone

Rows print (and with --out FILE are appended there) as each ends; `first s` is the time from the
start event to the first step (a compile shows there). --workdir DIR builds the model and images
once and reuses them (bench/gpu_run.sh runs one process per row); --prepare only builds them.

--set KEY=VALUE (repeatable) applies to every config, after everything else. --levers runs, for
each config, the baseline and then each lever alone (LEVERS below) and prints img/s with the
ratio to the baseline side by side.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorakit.config.load import load_config, parse_override  # noqa: E402
from lorakit.config.schema import TrainConfig  # noqa: E402
from lorakit.demo import make_synthetic_dataset  # noqa: E402
from lorakit.train.loop import train  # noqa: E402

SEEDS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "seed_guides"  # the guides' JSON blocks
COMMON = {"mixed_precision": "bf16", "cache_latents": True, "gradient_checkpointing": True,
          "max_token_length": 150, "shuffle_caption": True, "seed": 31337, "sample_prompts": None,
          "save_every_n_epochs": None, "save_every_n_steps": None, "sample_every_n_epochs": None}
LORA = {"network_type": "lora", "network_dim": 8, "network_alpha": 8, "optimizer_type": "AdamW",
        "learning_rate": 1e-4, "resolution": 512}
# a cached text encoder cannot train: the UNet-only LoRA SDXL guides use
SDXL_LORA = {**LORA, "resolution": 1024, "network_train_unet_only": True, "cache_text_encoder_outputs": True}
CONFIGS = {  # name -> (seed JSON block file or None, overrides)
    "lora_b1": (None, {**LORA, "train_batch_size": 1}),
    "lora_b15": (None, {**LORA, "train_batch_size": 15}),
    "seed_a_b1": ("dadapt_loha.json", {"train_batch_size": 1}),
    "seed_a_b15": ("dadapt_loha.json", {"train_batch_size": 15}),
    "seed_b_ia3_b1": ("prodigy_ia3.json", {"train_batch_size": 1, "resolution": 512}),
    "lokr_b1": ("prodigy_lokr.json", {"train_batch_size": 1, "resolution": 512}),
    "sdxl_lora_b1": (None, {**SDXL_LORA, "train_batch_size": 1}),
    "sdxl_lora_b4": (None, {**SDXL_LORA, "train_batch_size": 4}),
}
SDXL_CONFIGS = ("sdxl_lora_b1", "sdxl_lora_b4")  # trained on the SDXL model
# --levers: name -> values added to the config; fast_optimizer and cache_text_encoder_outputs only
# where they apply (see levers())
LEVERS = {
    "torch_compile": {"torch_compile": True},
    "compile+reduce-overhead": {"torch_compile": True, "torch_compile_mode": "reduce-overhead"},
    "channels_last": {"channels_last": True},
}
TFLOP_FWD = {512: 0.677, 576: 0.859}
PEAK_TFLOPS = 798.0  # measured H100 bf16 dense peak (performance-anchors.md)


def seed_values(block: str | None) -> dict:
    if block is None:
        return {}
    from lorakit.config.kohya import import_kohya_json

    return dict(import_kohya_json(SEEDS / block).values)


def build_model(tmp: Path, cpu: bool) -> Path:
    if cpu:
        from lorakit.models.tiny import save_tiny_pipeline

        return save_tiny_pipeline(tmp / "tiny", seed=0)
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorakit.models.configs_data import config_folder
    from lorakit.models.tiny import load_clip_tokenizer, make_scheduler

    cfg_dir = config_folder(False, False)
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(json.loads((cfg_dir / "unet" / "config.json").read_text())),
        vae=AutoencoderKL.from_config(json.loads((cfg_dir / "vae" / "config.json").read_text())),
        text_encoder=CLIPTextModel(CLIPTextConfig.from_pretrained(cfg_dir / "text_encoder")),
        tokenizer=load_clip_tokenizer(False), scheduler=make_scheduler(False), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(tmp / "sd15-random")
    return tmp / "sd15-random"


def build_sdxl(tmp: Path, cpu: bool) -> Path:
    """SDXL base's architecture with random weights (fp16 files; the loader trains from float32), built
    on the GPU where there is one (minutes less than on the CPU); --cpu: the tiny SDXL."""
    if cpu:
        from lorakit.models.tiny_sdxl import save_tiny_sdxl_pipeline

        return save_tiny_sdxl_pipeline(tmp / "tiny-sdxl", seed=0)
    import shutil

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.sdxl_configs import SDXL_CONFIG_DIR

    out = tmp / "sdxl-random"
    shutil.copytree(SDXL_CONFIG_DIR, out)  # configs, tokenizers, scheduler, model_index.json
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        for sub, make in (("unet", lambda c: UNet2DConditionModel.from_config(json.loads(c.read_text()))),
                          ("vae", lambda c: AutoencoderKL.from_config(json.loads(c.read_text()))),
                          ("text_encoder", lambda c: CLIPTextModel(CLIPTextConfig.from_pretrained(c.parent))),
                          ("text_encoder_2",
                           lambda c: CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(c.parent)))):
            module = make(out / sub / "config.json").to(torch.float16)
            module.save_pretrained(out / sub, safe_serialization=True)
            del module
    return out


def config_values(name: str, model: Path, data: Path, tmp: Path, cpu: bool, steps: int, warmup: int,
                  sets: dict) -> dict:
    block, overrides = CONFIGS[name]
    if name in SDXL_CONFIGS:
        model = model.parent / ("tiny-sdxl" if cpu else "sdxl-random")
    values = {**seed_values(block), **COMMON, **overrides,
              "pretrained_model_name_or_path": str(model), "train_data_dir": str(data),
              "output_dir": str(tmp / name), "max_train_steps": warmup + steps, "max_train_epochs": None}
    if cpu:
        values.update(resolution=64, mixed_precision="no", enable_bucket=False,
                      train_batch_size=min(values["train_batch_size"], 4))
    return {**values, **sets}


def levers(values: dict) -> dict[str, dict]:
    """The levers that apply to this config: name -> the values it changes."""
    from lorakit.optim.optimizers import resolve_optimizer

    out = dict(LEVERS)
    if values.get("dynamo_backend", "inductor") != "inductor":  # modes are inductor options
        out.pop("compile+reduce-overhead")
    if resolve_optimizer(values.get("optimizer_type", "AdamW"))[1].fast is not None:  # Prodigy / DAdapt*
        out["fast_optimizer"] = {"optimizer_args": {**values.get("optimizer_args", {}), "implementation": "fast"}}
    if values.get("network_type") in ("lora", "locon"):  # one op with W + dW instead of the bypass
        out["merged_op"] = {"network_args": {**values.get("network_args", {}), "merged_op": True}}
        # each layer shape's faster form, measured after the first step (a warm-up step)
        out["merged_op auto"] = {"network_args": {**values.get("network_args", {}), "merged_op": "auto"}}
    # a cached text encoder cannot train: these two rows are UNet-only, so compare them with each other
    out["unet only"] = {"network_train_unet_only": True, "network_train_text_encoder_only": False,
                        "cache_text_encoder_outputs": False}
    out["unet only + cached TE"] = {**out["unet only"], "cache_text_encoder_outputs": True}
    # every lever that keeps the baseline's work (the TE still trains), together
    together: dict = {}
    for name in ("torch_compile", "channels_last", "fast_optimizer", "merged_op"):
        together.update(out.get(name, {}))
    out["together"] = together
    return out


def run_config(name: str, values: dict, steps: int, warmup: int) -> dict:
    import torch._dynamo

    torch._dynamo.reset()  # no compiled graph of an earlier row serves (or limits) this one
    cfg = load_config(None, [], values)
    stamps: list[float] = []
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started: list[float] = []

    def on_event(ev):
        if ev.kind == "start":
            started.append(time.perf_counter())
        elif ev.kind == "step":
            stamps.append(time.perf_counter())
    train(cfg, [on_event], overwrite=True)
    dts = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    med = statistics.median(dts)
    p90 = sorted(dts)[int(0.9 * (len(dts) - 1))]
    bs = cfg.train_batch_size
    # first step, from the start event (model loaded, adapters applied): where compiling shows
    row = {"config": name, "batch": bs, "res": cfg.resolution[0], "img_s": bs / med, "median_s": med, "p90_s": p90,
           "first_s": stamps[0] - started[0]}
    if torch.cuda.is_available():
        row["peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        tflop = TFLOP_FWD.get(cfg.resolution[0], float("nan")) * (3 if cfg.gradient_checkpointing else 2)
        row["mfu"] = row["img_s"] * tflop / PEAK_TFLOPS  # nan: the UNet's FLOPs at this size are not known
    return row


def model_and_data(work: Path, cpu: bool, sdxl: bool = False) -> tuple[Path, Path]:
    """The random-weight SD1.5 model (with `sdxl`: also the SDXL one, beside it) and the 20 synthetic
    images under `work`, built unless already there."""
    import shutil

    model = work / ("tiny" if cpu else "sd15-random")
    if not (model / "model_index.json").is_file():
        shutil.rmtree(work / "model-tmp", ignore_errors=True)
        build_model(work / "model-tmp", cpu).rename(model)
    xl = work / ("tiny-sdxl" if cpu else "sdxl-random")
    if sdxl and not (xl / "unet" / "diffusion_pytorch_model.safetensors").is_file():
        shutil.rmtree(work / "sdxl-tmp", ignore_errors=True)
        build_sdxl(work / "sdxl-tmp", cpu).rename(xl)  # whole or absent, as the images
    data = work / "data"
    if not data.is_dir():
        shutil.rmtree(work / "data-tmp", ignore_errors=True)
        make_synthetic_dataset(work / "data-tmp", n_images=20, size=64 if cpu else 512, repeats=10)
        (work / "data-tmp").rename(data)  # whole or absent: a row killed mid-build leaves no half set
    return model, data


def plain_unet_reference(model: Path, batch: int) -> tuple[float, int, int]:
    """CPU: median seconds and operator counts of a plain UNet forward+backward vs a lorakit step."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    unet.requires_grad_(False)
    x = torch.randn(batch, 4, 8, 8, requires_grad=True)
    ctx = torch.randn(batch, 152, unet.config.cross_attention_dim)
    t = torch.randint(0, 1000, (batch,))
    times = []
    for _ in range(12):
        t0 = time.perf_counter()
        unet(x, t, ctx).sample.mean().backward()
        times.append(time.perf_counter() - t0)
    with torch.profiler.profile() as prof:
        unet(x, t, ctx).sample.mean().backward()
    return statistics.median(times[2:]), len(prof.events()), batch


def count_step_ops(model: Path, data: Path, tmp: Path, precision: str = "no") -> int:
    """Profiler events of one LoRA training step (the third), fp32 or under `precision` autocast."""
    values = {**COMMON, **LORA, "resolution": 64, "mixed_precision": precision, "train_batch_size": 1,
              "pretrained_model_name_or_path": str(model), "train_data_dir": str(data),
              "output_dir": str(tmp / "ops"), "max_train_steps": 3}
    counts = []
    prof = torch.profiler.profile()

    def on_step(ev):
        if ev.kind == "step" and ev.step == 2:
            prof.__enter__()
        elif ev.kind == "step" and ev.step == 3:
            prof.__exit__(None, None, None)
            counts.append(len(prof.events()))
    train(load_config(None, [], values), [on_step], overwrite=True)
    return counts[0]


def format_row(r: dict, cpu: bool, setting: str) -> str:
    """One results line (bench/vs_kohya.py reads them back)."""
    return (f"{r['config']:15s} {r['batch']:5d} {r['res']:4d} {r['img_s']:8.2f} {r['median_s']:7.3f} "
            f"{r['p90_s']:7.3f} {r['first_s']:7.1f}" + ("" if cpu else f" {r['peak_gb']:8.2f} {r['mfu']:6.1%}")
            + f"  {setting}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny model on the CPU (overhead ratios)")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config value for every config (repeatable; TOML syntax, e.g. torch_compile=true)")
    ap.add_argument("--levers", action="store_true",
                    help="per config: the baseline, then each speed lever alone, with the ratio to the baseline")
    ap.add_argument("--workdir", help="keep the model and the images here and reuse them (one process per row)")
    ap.add_argument("--out", help="append each row, as it ends, to this file")
    ap.add_argument("--label", help="the setting column of the rows (default: the --set values)")
    ap.add_argument("--rows-only", action="store_true", help="CPU: skip the plain-UNet and operator-count lines")
    ap.add_argument("--prepare", action="store_true", help="only build the model and images in --workdir")
    args = ap.parse_args()
    sets = dict(parse_override(item) for item in args.set)
    for key in sets:
        if key not in TrainConfig.model_fields:
            ap.error(f"--set {key}: not a config key")
    cpu = args.cpu or not torch.cuda.is_available()
    steps, warmup = args.steps or (10 if cpu else 30), args.warmup or (3 if cpu else 10)
    device = "cpu: " + _cpu_name() if cpu else torch.cuda.get_device_name()
    print(f"lorakit train bench, {time.strftime('%Y-%m-%d')}, device {device}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        work = Path(args.workdir) if args.workdir else tmp
        model, data = model_and_data(work, cpu, sdxl=any(n in SDXL_CONFIGS for n in args.configs))
        if args.prepare:
            print(f"model {model}, images {data}", flush=True)
            return 0
        if args.levers:
            run_levers(args.configs, model, data, tmp, cpu, steps, warmup, sets)
            return 0
        print(f"{'config':15s} {'batch':>5s} {'res':>4s} {'img/s':>8s} {'med s':>7s} {'p90 s':>7s} {'first s':>7s}"
              + ("" if cpu else f" {'peak GB':>8s} {'MFU':>6s}") + "  setting", flush=True)
        rows = []
        for n in args.configs:  # each row printed (and appended to --out) as it ends
            r = run_config(n, config_values(n, model, data, tmp, cpu, steps, warmup, sets), steps, warmup)
            rows.append(r)
            line = format_row(r, cpu, args.label or ' '.join(args.set) or 'eager')
            print(line, flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
        if cpu and not args.rows_only:
            plain_s, plain_ops, bs = plain_unet_reference(model, 1)
            lora = next((r for r in rows if r["config"] == "lora_b1"), None)
            step_ops = count_step_ops(model, data, tmp)
            print(f"plain UNet fwd+bwd, batch {bs}: {plain_s:.3f} s, {plain_ops} profiler events")
            if lora:
                print(f"overhead ratio, lorakit LoRA step / plain UNet fwd+bwd: {lora['median_s'] / plain_s:.2f}x")
            print(f"operator ratio, lorakit LoRA step / plain UNet fwd+bwd: {step_ops / plain_ops:.2f}x "
                  f"({step_ops} events)")
            # under autocast the casts show (the GPU setting); the plain UNet runs in fp32 either way
            print(f"lorakit LoRA step under bf16 autocast: {count_step_ops(model, data, tmp, 'bf16')} events")
    return 0


def run_levers(names: list[str], model: Path, data: Path, tmp: Path, cpu: bool, steps: int, warmup: int,
               sets: dict) -> None:
    print(f"{'config':15s} {'lever':30s} {'img/s':>8s} {'x base':>7s} {'med s':>7s} {'p90 s':>7s}"
          + ("" if cpu else f" {'peak GB':>8s}"))
    for n in names:
        base_values = config_values(n, model, data, tmp, cpu, steps, warmup, sets)
        base = None
        for lever, change in [("baseline", {}), *levers(base_values).items()]:
            try:
                r = run_config(n, {**base_values, **change}, steps, warmup)
            except Exception as e:  # one lever that fails (docs/speed.md "Known limits") ends only its row
                print(f"{n:15s} {lever:30s} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", flush=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            base = base or r
            print(f"{n:15s} {lever:30s} {r['img_s']:8.2f} {r['img_s'] / base['img_s']:6.2f}x {r['median_s']:7.3f} "
                  f"{r['p90_s']:7.3f}" + ("" if cpu else f" {r['peak_gb']:8.2f}"), flush=True)
    if cpu:
        print("(CPU: compile timings mean little here; measure the levers on a GPU)")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
