"""The published SD1.x / SD2.x diffusers configs, as data, and the writer of config-only folders.

The folders under ``lorakit/models/configs/`` are generated from these dicts by
``tools/make_model_configs.py``; they carry no weights. Single-file checkpoints carry no
configs, so the loader reads the matching folder from here. Their tokenizer folders hold only
settings; the BPE pair is shared (:mod:`lorakit.models.clip_tokenizer`).
"""
from __future__ import annotations

import json
from pathlib import Path

from .clip_tokenizer import write_tokenizer

CONFIGS_ROOT = Path(__file__).resolve().parent / "configs"

SCALED_LINEAR = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                 "beta_schedule": "scaled_linear", "trained_betas": None, "clip_sample": False,
                 "set_alpha_to_one": False, "steps_offset": 1}


def unet_config(v2: bool, sample_size: int = 64, upcast_attention: bool = False) -> dict:
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20] if v2 else 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 1024 if v2 else 768,
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "upcast_attention": upcast_attention,
        "use_linear_projection": v2,
    }


def vae_config(sample_size: int = 512) -> dict:
    return {
        "_class_name": "AutoencoderKL",
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_encoder_config(v2: bool) -> dict:
    common = {"architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "attention_dropout": 0.0,
              "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
              "max_position_embeddings": 77, "vocab_size": 49408, "bos_token_id": 49406,
              "eos_token_id": 49407, "torch_dtype": "float32"}
    if v2:  # OpenCLIP ViT-H/14 text tower without its last layer (SD2 uses the penultimate one)
        return {**common, "hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
                "num_attention_heads": 16, "num_hidden_layers": 23, "projection_dim": 512, "pad_token_id": 1}
    return {**common, "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
            "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768, "pad_token_id": 49407}


def scheduler_config(v_prediction: bool) -> dict:
    if v_prediction:
        return {"_class_name": "DDIMScheduler", **SCALED_LINEAR, "prediction_type": "v_prediction"}
    return {"_class_name": "PNDMScheduler", **SCALED_LINEAR, "skip_prk_steps": True,
            "prediction_type": "epsilon"}


def model_index() -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


# name -> (v2, v_prediction, unet sample size, vae sample size, upcast_attention)
CONFIG_FOLDERS = {
    "sd15": (False, False, 64, 512, False),
    "sd2-512": (True, False, 64, 512, False),
    "sd2-768-v": (True, True, 96, 768, True),
}


def config_folder(v2: bool, v_prediction: bool) -> Path:
    """The shipped config-only folder for a real SD1.x / SD2.x checkpoint."""
    name = ("sd2-768-v" if v_prediction else "sd2-512") if v2 else "sd15"
    return CONFIGS_ROOT / name


def _dump(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_config_folder(folder: Path, name: str) -> Path:
    """The config-only folder ``name`` of :data:`CONFIG_FOLDERS` (tokenizer settings without the BPE pair)."""
    v2, v_pred, unet_size, vae_size, upcast = CONFIG_FOLDERS[name]
    folder = Path(folder)
    index = model_index()
    index["scheduler"] = ["diffusers", scheduler_config(v_pred)["_class_name"]]
    _dump(folder / "model_index.json", index)
    _dump(folder / "unet" / "config.json", unet_config(v2, unet_size, upcast))
    _dump(folder / "vae" / "config.json", vae_config(vae_size))
    _dump(folder / "text_encoder" / "config.json", text_encoder_config(v2))
    _dump(folder / "scheduler" / "scheduler_config.json", scheduler_config(v_pred))
    write_tokenizer(folder / "tokenizer", v2, bpe=False)
    return folder
