"""Train the small base model shipped with lorakit (lorakit/models/base/), on the CPU.

    nice -n 10 python tools/train_base.py      # 2730 s + 150 s measured on 2 cores shared with ~8 jobs

Four stages, every random draw from a seeded generator (not checked bit for bit across machines):
1. the VAE (8x downsampling, 8x8x4 latents) learns to reconstruct shapes of *any* hue on
   light backgrounds (MSE + a small KL term); its posterior variance is pinned tiny (pin_logvar);
2. a fixed set of captioned images ("a red circle": 4 shapes x 4 colours, position, size,
   background and shade varied) is encoded once; the text encoder keeps its seeded random weights
   (frozen), its states for the 17 captions (16 + the empty one) are computed once;
3. the UNet learns epsilon-prediction on the DDPM scaled-linear schedule (SD1's), 10 % empty
   captions so that classifier-free guidance works; an EMA of its weights is what is shipped;
4. the decoder alone is trained further (encoder frozen, so the UNet's latents stay valid).
   ``--decoder-only`` runs this stage by itself on WORK/vae (stage 1's VAE) into an existing model.

Checkpoints: the whole diffusers folder is rewritten (atomically) every --save-every UNet steps,
so a run stopped early still leaves a usable model. The card (CARD.md) records the data, steps,
seed and wall time; ``tools/score_base.py`` appends the scores.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lorakit.models.base import BASE_DIR, build_base_components  # noqa: E402
from lorakit.models.clip_tokenizer import write_tokenizer  # noqa: E402
from lorakit.models.text import encode, tokenize  # noqa: E402
from lorakit.quality import shapes  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def to_tensor(imgs) -> torch.Tensor:
    arr = np.stack([shapes.to_array(i) for i in imgs]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def vae_batch(rng: np.random.Generator, n: int) -> torch.Tensor:
    imgs = []
    for _ in range(n):
        shape = shapes.SHAPES[int(rng.integers(len(shapes.SHAPES)))]
        if rng.random() < 0.5:
            rgb = shapes.jitter(list(shapes.COLOURS.values())[int(rng.integers(len(shapes.COLOURS)))], rng)
        else:
            rgb = shapes.random_colour(rng)
        imgs.append(shapes.draw(shape, rgb, rng))
    return to_tensor(imgs)


def pin_logvar(vae, logvar: float = -20.0) -> None:
    """Make the posterior's variance tiny and fixed (std e^-10), so sample() ~ mean.

    At its initial ~1 the decoder would first see mostly noise, and a short run cannot learn the
    variance down; pinned, the latents a trainer samples (lorakit's cache does) are the ones the
    base model's UNet learnt.
    """
    n = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[n:] = 0.0
        vae.quant_conv.bias[n:] = logvar
    vae.quant_conv.weight.register_hook(lambda g: torch.cat([g[:n], torch.zeros_like(g[n:])]))
    vae.quant_conv.bias.register_hook(lambda g: torch.cat([g[:n], torch.zeros_like(g[n:])]))


def shape_weighted_mse(rec: torch.Tensor, x: torch.Tensor, fg_weight: float) -> torch.Tensor:
    """MSE with the shape's pixels weighted 1 + fg_weight: the plain background is most of each image,
    so a plain MSE is low long before the shape's colour is right (red decoded as orange)."""
    if not fg_weight:
        return F.mse_loss(rec, x)
    fg = ((x - x[:, :, :1, :1]).abs().sum(1, keepdim=True) > 0.4).to(x.dtype)  # far from the corner's colour
    return ((1 + fg_weight * fg) * (rec - x) ** 2).mean() / (1 + fg_weight * fg.mean())


def train_vae(vae, steps: int, batch: int, lr: float, rng: np.random.Generator, kl_weight: float,
              fg_weight: float = 0.0) -> None:
    pin_logvar(vae)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x = vae_batch(rng, batch)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = shape_weighted_mse(rec, x, fg_weight)
        loss = mse + kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps:
            log(f"vae step {step}/{steps} mse {mse.item():.5f} ({(time.perf_counter() - t0) / step:.2f} s/step)")
    vae.eval()


def finetune_decoder(vae, steps: int, batch: int, lr: float, rng: np.random.Generator, fg_weight: float = 0.0) -> float:
    """Sharpen the decoder (colours above all) with the encoder frozen: the latents the UNet learnt
    stay the same. Returns the last batch's MSE."""
    vae.requires_grad_(False)
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    vae.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    t0, mse = time.perf_counter(), torch.tensor(float("nan"))
    for step in range(1, steps + 1):
        x = vae_batch(rng, batch)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()
        mse = shape_weighted_mse(vae.decode(z).sample, x, fg_weight)
        opt.zero_grad(set_to_none=True)
        mse.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps:
            log(f"decoder step {step}/{steps} mse {mse.item():.5f} ({(time.perf_counter() - t0) / step:.2f} s/step)")
    vae.eval().requires_grad_(False)
    return float(mse.detach())


def caption_set() -> list[tuple[str, str]]:
    return [(s, c) for s in shapes.SHAPES for c in shapes.COLOURS]


def make_dataset(n: int, rng: np.random.Generator):
    pairs = caption_set()
    labels = np.array([i % len(pairs) for i in range(n)])
    rng.shuffle(labels)
    imgs = []
    for k in labels:
        shape, colour = pairs[int(k)]
        imgs.append(shapes.draw(shape, shapes.jitter(shapes.COLOURS[colour], rng), rng))
    return imgs, torch.from_numpy(labels)


@torch.no_grad()
def encode_latents(vae, imgs, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(imgs), 64):
        out.append(vae.encode(to_tensor(imgs[i:i + 64])).latent_dist.sample(generator=g))
    return torch.cat(out)


@torch.no_grad()
def caption_states(text_encoder, tokenizer) -> torch.Tensor:
    """States for the 16 captions, then the empty caption (index 16)."""
    texts = [shapes.caption(s, c) for s, c in caption_set()] + [""]
    return encode(text_encoder, tokenize(tokenizer, texts, 75), clip_skip=1)


def save_model(folder: Path, comps: dict, unet) -> None:
    """Write the diffusers folder (fp16 weights, fp32 at load) atomically: tmp folder, then swap."""
    from diffusers import StableDiffusionPipeline

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    halves = {k: copy.deepcopy(comps[k]).half() for k in ("vae", "text_encoder")}
    pipe = StableDiffusionPipeline(vae=halves["vae"], text_encoder=halves["text_encoder"],
                                   tokenizer=comps["tokenizer"], unet=copy.deepcopy(unet).half(),
                                   scheduler=comps["scheduler"], safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    shutil.rmtree(tmp / "tokenizer")  # the slow tokenizer's two files: 1.5 MB instead of 3.6
    write_tokenizer(tmp / "tokenizer", v2=False)
    card = folder / "CARD.md"
    if card.exists():
        shutil.copy2(card, tmp / "CARD.md")
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def train_unet(comps, latents, labels, states, args, rng_seed: int, out: Path) -> dict:
    unet, sched = comps["unet"], comps["scheduler"]
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_config(sched.config)
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    warm = max(1, args.unet_steps // 20)

    def lr_at(step):  # linear warm-up, cosine down to 10 %
        if step < warm:
            return (step + 1) / warm
        p = (step - warm) / max(1, args.unet_steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))

    lrs = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    g = torch.Generator().manual_seed(rng_seed)
    n = latents.shape[0]
    empty = states.shape[0] - 1
    t0 = time.perf_counter()
    running = None
    last = min(args.unet_steps, args.stop_at or args.unet_steps)
    for step in range(1, last + 1):
        idx = torch.randint(0, n, (args.batch,), generator=g)
        x0 = latents[idx]
        lab = labels[idx].clone()
        lab[torch.rand(args.batch, generator=g) < args.uncond] = empty
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, ddpm.config.num_train_timesteps, (args.batch,), generator=g)
        noisy = ddpm.add_noise(x0, noise, t)
        pred = unet(noisy, t, states[lab]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lrs.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 50 == 0 or step == last:
            log(f"unet step {step}/{args.unet_steps} loss {running:.4f} "
                f"({(time.perf_counter() - t0) / step:.2f} s/step)")
        if step % args.save_every == 0 or step == last:
            save_model(out, comps, ema)
            log(f"saved {out} at step {step}")
    return {"unet_steps_run": last, "unet_seconds": round(time.perf_counter() - t0),
            "final_loss": round(running, 4)}, ema


def write_card(out: Path, info: dict) -> None:
    lines = ["# lorakit's shipped base model", "",
             "SD1 architecture classes scaled down (UNet2DConditionModel, AutoencoderKL with 8x downsampling, "
             "CLIPTextModel 32 wide with the real CLIP tokenizer), 64 px images, epsilon prediction on SD1's "
             "scaled-linear DDPM schedule. Trained from scratch by `tools/train_base.py`; weights stored as fp16.", "",
             "## Data", "",
             f"Procedural images (lorakit/quality/shapes.py): shapes {', '.join(shapes.SHAPES)} x colours "
             f"{', '.join(shapes.COLOURS)}, one shape per image on a plain light background (each channel 205-255), "
             "half-extent 22-40 % of the image, position anywhere it fits, shade jittered by +-12 per channel. "
             "Captions `a <colour> <shape>`; 10 % of training steps use the empty caption (for CFG). "
             f"Never shown: {', '.join(shapes.NEW_COLOURS)} (the demo's concept). "
             "The VAE also saw shapes in random saturated colours of any hue.", "",
             "## Training", "", "```json", json.dumps(info, indent=2), "```", "",
             "## Limits", "",
             "The VAE's loss weights the shape's pixels (--fg-weight): with a plain MSE a short VAE stage draws red "
             "as orange and purple as blue. The UNet is small (8x8 latents): triangles and squares are its weakest "
             "shapes. The pixel scorer's table below is the measure.", ""]
    (out / "CARD.md").write_text("\n".join(lines), encoding="utf-8")


def decoder_stage(vae, imgs, raw, args) -> dict:
    """Stage 4; it reads only stage 1's VAE and its own seed, so it may also run after the fact."""
    if not args.decoder_steps:
        return {}
    finetune_decoder(vae, args.decoder_steps, args.vae_batch, args.decoder_lr, np.random.default_rng(args.seed + 50),
                     args.fg_weight)
    with torch.no_grad():
        mse = float(F.mse_loss(vae.decode(raw[:256]).sample, to_tensor(imgs[:256])))
    log(f"decoder stage: held-in recon mse {mse:.5f}")
    return {"decoder_steps": args.decoder_steps, "decoder_lr": args.decoder_lr, "vae_recon_mse_after_decoder": round(mse, 5)}


def decoder_only(args) -> int:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(args.work / "vae")).float().eval()
    pin_logvar(vae)
    imgs = make_dataset(args.images, np.random.default_rng(args.seed + 20))[0][:256]
    raw = encode_latents(vae, imgs, args.seed + 30)
    info = decoder_stage(vae, imgs, raw, args)
    shipped = AutoencoderKL.from_pretrained(str(args.out / "vae"))
    vae.register_to_config(scaling_factor=shipped.config.scaling_factor)
    vae.half().save_pretrained(str(args.out / "vae"), safe_serialization=True)
    card = args.out / "CARD.md"
    head, _, rest = card.read_text(encoding="utf-8").partition("```json\n")
    blob, _, tail = rest.partition("```")
    data = {**json.loads(blob), **info}
    card.write_text(head + "```json\n" + json.dumps(data, indent=2) + "\n```" + tail, encoding="utf-8")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=BASE_DIR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--vae-steps", type=int, default=1500)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--vae-lr", type=float, default=2e-3)
    ap.add_argument("--kl", type=float, default=1e-6)
    ap.add_argument("--fg-weight", type=float, default=3.0,
                    help="extra weight of the shape's pixels in the VAE and decoder losses (0: plain MSE)")
    ap.add_argument("--vae-from", type=Path, default=None, help="reuse a trained VAE folder (skips stage 1)")
    ap.add_argument("--images", type=int, default=4096)
    ap.add_argument("--unet-steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--uncond", type=float, default=0.1)
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--stop-at", type=int, default=None,
                    help="stop the UNet stage after this many steps (its schedule still spans --unet-steps)")
    ap.add_argument("--decoder-steps", type=int, default=400)
    ap.add_argument("--decoder-lr", type=float, default=1e-3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lorakit-base-work"))
    ap.add_argument("--decoder-only", action="store_true",
                    help="run stage 4 alone on WORK/vae (stage 1's VAE) and put the decoder into --out "
                         "(what a full run does after stage 3; the UNet is untouched)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    if args.decoder_only:
        return decoder_only(args)
    comps = build_base_components(seed=args.seed)
    vae = comps["vae"]
    args.work.mkdir(parents=True, exist_ok=True)
    if args.vae_from:
        from diffusers import AutoencoderKL

        comps["vae"] = vae = AutoencoderKL.from_pretrained(str(args.vae_from)).float().eval()
        log(f"VAE from {args.vae_from}")
    else:
        train_vae(vae, args.vae_steps, args.vae_batch, args.vae_lr, np.random.default_rng(args.seed + 10), args.kl,
                  args.fg_weight)
        vae.save_pretrained(str(args.work / "vae"))
    vae.requires_grad_(False)
    imgs, labels = make_dataset(args.images, np.random.default_rng(args.seed + 20))
    raw = encode_latents(vae, imgs, args.seed + 30)
    scale = float(1.0 / raw.std())
    vae.register_to_config(scaling_factor=round(scale, 5))
    latents = raw * vae.config.scaling_factor
    with torch.no_grad():
        rec = vae.decode(raw[:256]).sample
        vae_mse = float(F.mse_loss(rec, to_tensor(imgs[:256])))
    log(f"latents {tuple(latents.shape)} scaling_factor {vae.config.scaling_factor} held-in recon mse {vae_mse:.5f}")
    text_encoder = comps["text_encoder"].eval().requires_grad_(False)
    states = caption_states(text_encoder, comps["tokenizer"])
    info = {"seed": args.seed, "vae_steps": args.vae_steps, "vae_reused_from_stage_1": bool(args.vae_from), "vae_batch": args.vae_batch,
            "vae_lr": args.vae_lr, "kl_weight": args.kl, "fg_weight": args.fg_weight, "vae_recon_mse": round(vae_mse, 5),
            "scaling_factor": vae.config.scaling_factor, "images": args.images, "unet_steps": args.unet_steps,
            "batch": args.batch, "lr": args.lr, "ema": args.ema, "uncond": args.uncond,
            "text_encoder": "seeded random weights, frozen", "threads": args.threads}
    args.out.mkdir(parents=True, exist_ok=True)
    write_card(args.out, info)
    unet_info, ema = train_unet(comps, latents, labels, states, args, args.seed + 40, args.out)
    info.update(unet_info)
    info.update(decoder_stage(vae, imgs, raw, args))
    info["wall_seconds"] = round(time.perf_counter() - t_start)
    write_card(args.out, info)
    save_model(args.out, comps, ema)
    log(f"done in {info['wall_seconds']} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
