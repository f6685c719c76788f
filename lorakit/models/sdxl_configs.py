"""The published SDXL base 1.0 diffusers configs, as data, and the writer of the SDXL config-only folder.

``lorakit/models/configs/sdxl/`` is generated from these dicts by ``tools/make_model_configs.py``
(no weights). The values are those of stabilityai/stable-diffusion-xl-base-1.0 (as sd-scripts'
``sdxl_model_util.DIFFUSERS_SDXL_UNET_CONFIG`` restates the UNet's): a UNet with
``addition_embed_type = "text_time"`` (pooled text + 6 size/crop ids), CLIP ViT-L as text
encoder 1, OpenCLIP ViT-bigG (with its projection) as text encoder 2, the VAE with scaling
0.13025 that overflows in fp16 (``force_upcast``). Tokenizer 2 is the same BPE with pad "!" (id 0).
"""
from __future__ import annotations

import json
from pathlib import Path

from .clip_tokenizer import load_tokenizer, write_tokenizer
from .configs_data import CONFIGS_ROOT, SCALED_LINEAR, text_encoder_config, vae_config

SDXL_CONFIG_DIR = CONFIGS_ROOT / "sdxl"
VAE_SCALE = 0.13025
TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)


def sdxl_unet_config() -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 2048,
        "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,  # 1280 pooled + 6 x 256 time-id features
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": False,
        "use_linear_projection": True,
    }


def sdxl_vae_config() -> dict:
    return {**vae_config(1024), "scaling_factor": VAE_SCALE, "force_upcast": True}


def sdxl_text_encoder_config() -> dict:
    """CLIP ViT-L/14's text tower (as SD1's)."""
    return text_encoder_config(False)


def sdxl_text_encoder_2_config() -> dict:
    """OpenCLIP ViT-bigG/14's text tower, all 32 layers, with its 1280 x 1280 projection."""
    return {"architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
            "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
            "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "vocab_size": 49408, "bos_token_id": 49406,
            "eos_token_id": 49407, "pad_token_id": 1, "torch_dtype": "float32", "hidden_act": "gelu",
            "hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "num_hidden_layers": 32,
            "projection_dim": 1280}


def sdxl_scheduler_config(v_prediction: bool = False) -> dict:
    return {"_class_name": "EulerDiscreteScheduler", **SCALED_LINEAR, "interpolation_type": "linear",
            "sample_max_value": 1.0, "skip_prk_steps": True, "timestep_spacing": "leading",
            "use_karras_sigmas": False, "prediction_type": "v_prediction" if v_prediction else "epsilon"}


def sdxl_model_index(scheduler: str = "EulerDiscreteScheduler") -> dict:
    return {
        "_class_name": "StableDiffusionXLPipeline",
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def _dump(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_sdxl_tokenizers(folder: Path, bpe: bool = True) -> None:
    """tokenizer/ (pad = eos, as CLIP ViT-L's) and tokenizer_2/ (pad "!", id 0, as sd-scripts sets it);
    ``bpe``: with their copies of the shared BPE pair (see :func:`clip_tokenizer.write_tokenizer`)."""
    write_tokenizer(Path(folder) / "tokenizer", False, bpe)
    write_tokenizer(Path(folder) / "tokenizer_2", True, bpe)


def write_sdxl_config_folder(folder: Path) -> Path:
    folder = Path(folder)
    _dump(folder / "model_index.json", sdxl_model_index())
    _dump(folder / "unet" / "config.json", sdxl_unet_config())
    _dump(folder / "vae" / "config.json", sdxl_vae_config())
    _dump(folder / "text_encoder" / "config.json", sdxl_text_encoder_config())
    _dump(folder / "text_encoder_2" / "config.json", sdxl_text_encoder_2_config())
    _dump(folder / "scheduler" / "scheduler_config.json", sdxl_scheduler_config())
    write_sdxl_tokenizers(folder, bpe=False)
    return folder


def load_sdxl_tokenizers(folder: Path | None = None):
    """(tokenizer, tokenizer_2) from ``folder`` (default: the shipped SDXL configs), offline."""
    folder = Path(folder or SDXL_CONFIG_DIR)
    return tuple(load_tokenizer(folder / sub) for sub in ("tokenizer", "tokenizer_2"))
