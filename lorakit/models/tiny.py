"""Tiny random-weight SD1/SD2 models for tests and the demo (built in a fraction of a second).

- :func:`build_tiny_components` -> dict(unet, vae, text_encoder, tokenizer, scheduler)
- :func:`save_tiny_pipeline` -> a diffusers folder (StableDiffusionPipeline layout)
- :func:`save_tiny_single_file` -> an original-LDM-layout ``.safetensors``/``.ckpt`` plus the
  matching config-only folder (single files carry no configs; pass it as ``config_dir``).

The tokenizer is the real CLIP BPE tokenizer shipped with the package, so the text encoder
keeps the real vocabulary size (49408) with a 32-wide hidden state.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .clip_tokenizer import load_tokenizer, write_tokenizer
from .configs_data import CONFIGS_ROOT, model_index, scheduler_config
from .ldm_layout import SD2_TE_PREFIX, to_ldm

TINY_HIDDEN = 32


def tiny_unet_config(v2: bool) -> dict:
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64), norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TINY_HIDDEN,
                attention_head_dim=(2, 4) if v2 else 8, use_linear_projection=v2)


def tiny_vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
                block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.18215)


def tiny_text_config(v2: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=TINY_HIDDEN, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                          hidden_act="gelu" if v2 else "quick_gelu", projection_dim=TINY_HIDDEN,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=1 if v2 else 49407)


def load_clip_tokenizer(v2: bool):
    """The shipped CLIP tokenizer (SD1: pad = eos; SD2: pad "!" = id 0), offline."""
    return load_tokenizer(CONFIGS_ROOT / ("sd2-512" if v2 else "sd15") / "tokenizer")


def make_scheduler(v_prediction: bool):
    import diffusers

    cfg = scheduler_config(v_prediction)
    cls = getattr(diffusers, cfg.pop("_class_name"))
    return cls.from_config(cfg)


def build_tiny_components(v2: bool = False, seed: int = 0, v_prediction: bool = False) -> dict:
    """Random tiny UNet/VAE/CLIP text encoder, deterministic given ``seed`` (global RNG untouched)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .loader import use_sdpa

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_unet_config(v2))
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**tiny_vae_config())
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(tiny_text_config(v2))
    use_sdpa(unet, vae)
    for m in (unet, vae, text_encoder):
        m.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": load_clip_tokenizer(v2),
            "scheduler": make_scheduler(v_prediction)}


def save_tiny_pipeline(path, v2: bool = False, v_prediction: bool = False, seed: int = 0) -> Path:
    """Write a tiny diffusers folder (StableDiffusionPipeline, no safety checker); returns its path."""
    from diffusers import StableDiffusionPipeline

    c = build_tiny_components(v2=v2, seed=seed, v_prediction=v_prediction)
    pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                   unet=c["unet"], scheduler=c["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    path = Path(path)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def write_tiny_config_dir(folder, v2: bool = False, v_prediction: bool = False) -> Path:
    """The config-only folder (no weights) matching the tiny models, for single-file loading."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    sched = scheduler_config(v_prediction)
    index = model_index()
    index["scheduler"] = ["diffusers", sched["_class_name"]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    with torch.device("meta"):
        UNet2DConditionModel(**tiny_unet_config(v2)).save_config(str(folder / "unet"))
        AutoencoderKL(**tiny_vae_config()).save_config(str(folder / "vae"))
    tiny_text_config(v2).save_pretrained(str(folder / "text_encoder"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2), encoding="utf-8")
    write_tokenizer(folder / "tokenizer", v2, bpe=False)  # as the shipped config folders
    return folder


def save_tiny_single_file(path, v2: bool = False, v_prediction: bool = False, seed: int = 0,
                          fmt: str = "safetensors") -> tuple[Path, Path]:
    """Write the tiny model as one original-LDM-layout checkpoint.

    Returns ``(file, config_dir)``: ``file`` is ``path`` (suffix set from ``fmt``), ``config_dir``
    (``<file>.configs``) the matching config-only folder to pass to ``load_sd_model``.
    SD2 files mimic the real ones: an extra last open_clip layer (unused by SD2),
    ``text_projection`` and ``logit_scale`` are present and must be ignored by loaders.
    """
    if fmt not in ("safetensors", "ckpt"):
        raise ValueError(f"fmt must be 'safetensors' or 'ckpt', not {fmt!r}")
    c = build_tiny_components(v2=v2, seed=seed, v_prediction=v_prediction)
    sd = to_ldm(c["unet"], c["vae"], c["text_encoder"], v2)
    if v2:
        g = torch.Generator().manual_seed(seed + 3)
        n, h = c["text_encoder"].config.num_hidden_layers, TINY_HIDDEN
        layer = f"{SD2_TE_PREFIX}transformer.resblocks.{n}."
        shapes = {"ln_1.weight": (h,), "ln_1.bias": (h,), "attn.in_proj_weight": (3 * h, h),
                  "attn.in_proj_bias": (3 * h,), "attn.out_proj.weight": (h, h), "attn.out_proj.bias": (h,),
                  "ln_2.weight": (h,), "ln_2.bias": (h,), "mlp.c_fc.weight": (64, h), "mlp.c_fc.bias": (64,),
                  "mlp.c_proj.weight": (h, 64), "mlp.c_proj.bias": (h,)}
        for k, s in shapes.items():
            sd[layer + k] = torch.randn(s, generator=g)
        sd[SD2_TE_PREFIX + "text_projection"] = torch.randn(h, h, generator=g)
        sd[SD2_TE_PREFIX + "logit_scale"] = torch.tensor(4.6052)
    sd["alphas_cumprod"] = c["scheduler"].alphas_cumprod.clone().float()
    path = Path(path).with_suffix("." + fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata={"format": "pt"})
    else:
        torch.save({"state_dict": sd, "global_step": 0, "epoch": 0}, str(path))
    config_dir = write_tiny_config_dir(Path(str(path) + ".configs"), v2=v2, v_prediction=v_prediction)
    return path, config_dir
