"""The small pretrained base model shipped with lorakit (package data under ``models/base/``).

SD1 architecture classes (UNet2DConditionModel, AutoencoderKL, CLIPTextModel with the real
CLIP tokenizer) scaled down to draw 64 px images of the shapes in :mod:`lorakit.quality.shapes`
("a red circle"). The VAE downsamples 8x like SD's (8x8x4 latents). ``tools/train_base.py`` trains it;
``models/base/CARD.md`` says on what, for how long, and how well it draws.
"""
from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent / "base"
BASE_HIDDEN = 32


def base_unet_config() -> dict:
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 64), norm_num_groups=16,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=BASE_HIDDEN, attention_head_dim=8)


def base_vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
                block_out_channels=(16, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=1.0)


def base_text_config():
    from .tiny import tiny_text_config

    cfg = tiny_text_config(v2=False)
    assert cfg.hidden_size == BASE_HIDDEN
    return cfg


def build_base_components(seed: int = 0) -> dict:
    """Untrained base-model modules (the starting point of tools/train_base.py)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from .tiny import load_clip_tokenizer, make_scheduler

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**base_unet_config())
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**base_vae_config())
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(base_text_config())
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": load_clip_tokenizer(False),
            "scheduler": make_scheduler(False)}


def base_model_path() -> Path:
    """The shipped base model's diffusers folder; a clear error when the weights are missing."""
    from ..errors import ModelError

    if not (BASE_DIR / "unet" / "diffusion_pytorch_model.safetensors").exists():
        raise ModelError("the shipped base model's weights are missing", file=str(BASE_DIR),
                         fix="run `python tools/train_base.py` to train them (about 45 minutes on 2 CPU cores)")
    return BASE_DIR
