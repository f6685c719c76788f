"""A tiny random-weight SDXL for tests (built in a fraction of a second).

The architecture of SDXL in small: a UNet with the ``text_time`` added embedding, a level
without attention first, two layers per block and two transformer layers in the attention
level; text encoder 1 a CLIPTextModel, text encoder 2 a CLIPTextModelWithProjection of another
width and projection width (so a swap or a missed projection changes shapes); the real CLIP
tokenizers (pad = eos for 1, pad "!" for 2).

- :func:`build_tiny_sdxl` -> :class:`lorakit.models.sdxl.SDXLModel`
- :func:`save_tiny_sdxl_pipeline` -> a diffusers folder (StableDiffusionXLPipeline layout)
- :func:`save_tiny_sdxl_single_file` -> an SGM-layout ``.safetensors`` and its config-only folder
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .sdxl_configs import (VAE_SCALE, load_sdxl_tokenizers, sdxl_model_index, sdxl_scheduler_config,
                           write_sdxl_tokenizers)
from .tiny import TINY_HIDDEN, tiny_vae_config

TE1_HIDDEN, TE2_HIDDEN, TE2_PROJECTION, TIME_DIM = TINY_HIDDEN, 64, 40, 8
CONTEXT = TE1_HIDDEN + TE2_HIDDEN


def tiny_sdxl_unet_config() -> dict:
    return dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=(32, 64), norm_num_groups=32,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4), use_linear_projection=True,
                cross_attention_dim=CONTEXT, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
                projection_class_embeddings_input_dim=TE2_PROJECTION + 6 * TIME_DIM)


def tiny_sdxl_vae_config() -> dict:
    return {**tiny_vae_config(), "scaling_factor": VAE_SCALE, "force_upcast": True}


def tiny_sdxl_text_configs():
    from transformers import CLIPTextConfig

    common = dict(vocab_size=49408, intermediate_size=64, num_attention_heads=4, max_position_embeddings=77,
                  bos_token_id=49406, eos_token_id=49407)
    te1 = CLIPTextConfig(hidden_size=TE1_HIDDEN, num_hidden_layers=2, hidden_act="quick_gelu",
                         projection_dim=TE1_HIDDEN, pad_token_id=49407, **common)
    te2 = CLIPTextConfig(hidden_size=TE2_HIDDEN, num_hidden_layers=3, hidden_act="gelu",
                         projection_dim=TE2_PROJECTION, pad_token_id=1, **common)
    return te1, te2


def build_tiny_sdxl(seed: int = 0, v_prediction: bool = False):
    """Random tiny SDXLModel, deterministic given ``seed`` (global RNG untouched)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .loader import use_sdpa
    from .schedule import make_noise_scheduler
    from .sdxl import SDXLModel

    te1_cfg, te2_cfg = tiny_sdxl_text_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**tiny_sdxl_unet_config())
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**tiny_sdxl_vae_config())
        torch.manual_seed(seed + 2)
        te1 = CLIPTextModel(te1_cfg)
        torch.manual_seed(seed + 3)
        te2 = CLIPTextModelWithProjection(te2_cfg)
    use_sdpa(unet, vae)
    for m in (unet, vae, te1, te2):
        m.eval()
    tok1, tok2 = load_sdxl_tokenizers()
    return SDXLModel(unet, vae, te1, te2, tok1, tok2, make_noise_scheduler(v_prediction), v_prediction,
                     "diffusers", "tiny-sdxl")


def save_tiny_sdxl_pipeline(path, seed: int = 0, v_prediction: bool = False) -> Path:
    """Write a tiny SDXL diffusers folder; returns its path."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    m = build_tiny_sdxl(seed, v_prediction)
    cfg = sdxl_scheduler_config(v_prediction)
    cfg.pop("_class_name")
    pipe = StableDiffusionXLPipeline(vae=m.vae, text_encoder=m.text_encoder, text_encoder_2=m.text_encoder_2,
                                     tokenizer=m.tokenizer, tokenizer_2=m.tokenizer_2, unet=m.unet,
                                     scheduler=EulerDiscreteScheduler.from_config(cfg))
    path = Path(path)
    pipe.save_pretrained(str(path), safe_serialization=True)
    return path


def write_tiny_sdxl_config_dir(folder, v_prediction: bool = False) -> Path:
    """The config-only folder (no weights) of the tiny SDXL, for single-file loading."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(sdxl_model_index(), indent=2), encoding="utf-8")
    with torch.device("meta"):
        UNet2DConditionModel(**tiny_sdxl_unet_config()).save_config(str(folder / "unet"))
        AutoencoderKL(**tiny_sdxl_vae_config()).save_config(str(folder / "vae"))
    te1, te2 = tiny_sdxl_text_configs()
    te1.architectures, te2.architectures = ["CLIPTextModel"], ["CLIPTextModelWithProjection"]
    te1.save_pretrained(str(folder / "text_encoder"))
    te2.save_pretrained(str(folder / "text_encoder_2"))
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(sdxl_scheduler_config(v_prediction), indent=2), encoding="utf-8")
    write_sdxl_tokenizers(folder, bpe=False)  # as the shipped config folder
    return folder


def save_tiny_sdxl_single_file(path, seed: int = 0, v_prediction: bool = False) -> tuple[Path, Path]:
    """The tiny SDXL as one SGM-layout ``.safetensors`` (``alphas_cumprod`` included, as in
    real files) and its config-only folder ``<file>.configs``: returns ``(file, config_dir)``."""
    from safetensors.torch import save_file

    from .sgm_layout import to_sgm

    m = build_tiny_sdxl(seed, v_prediction)
    sd = to_sgm(m.unet, m.vae, m.text_encoder, m.text_encoder_2)
    sd["alphas_cumprod"] = m.noise_scheduler.alphas_cumprod.clone().float()
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt"})
    return path, write_tiny_sdxl_config_dir(Path(str(path) + ".configs"), v_prediction)
