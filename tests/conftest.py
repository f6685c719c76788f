"""Shared fixtures: tiny random SD models (offline, built once per session)."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tiny test models gain nothing from threads; on 2 cores two test processes (torchrun,
# a killed-and-resumed run) would otherwise fight over them.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_components():
    """Builder: ``tiny_components(v2=False, seed=0)`` -> dict(unet, vae, text_encoder, tokenizer, scheduler).

    Each call builds fresh modules (tests may modify them).
    """
    from lorakit.models.tiny import build_tiny_components

    return build_tiny_components


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny SD1-style diffusers folder (seed 0), written once per session."""
    from lorakit.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-model") / "tiny-sd1", seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A tiny SDXL diffusers folder (seed 1: both text encoders, text_time embedding), written once."""
    from lorakit.models.tiny_sdxl import save_tiny_sdxl_pipeline

    return save_tiny_sdxl_pipeline(tmp_path_factory.mktemp("tiny-sdxl") / "tiny-sdxl", seed=1)


@pytest.fixture(scope="session")
def full_sdxl():
    """SDXL base's architecture on the meta device (no weights, no memory): its module names and shapes."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.sdxl import SDXLModel
    from lorakit.models.sdxl_configs import SDXL_CONFIG_DIR, sdxl_unet_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**{k: v for k, v in sdxl_unet_config().items() if not k.startswith("_")})
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL_CONFIG_DIR / "text_encoder_2"))
    return SDXLModel(unet, None, te1, te2, None, None, None, False, "diffusers", "meta")



# LyCORIS 4.1.3 as an independent loader of adapter files
@pytest.fixture
def lycoris_kohya():
    kohya = pytest.importorskip("lycoris.kohya")
    cls = kohya.LycorisNetworkKohya
    names = ("ENABLE_CONV", "UNET_TARGET_REPLACE_MODULE", "UNET_TARGET_REPLACE_NAME",
             "TEXT_ENCODER_TARGET_REPLACE_MODULE", "TEXT_ENCODER_TARGET_REPLACE_NAME")
    saved = {n: getattr(cls, n) for n in names}
    # its default "full" preset crashes on SD1/2 (duplicate time_embedding name): kohya's targets instead
    cls.apply_preset({"enable_conv": True,
                      "unet_target_module": ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"],
                      "unet_target_name": [], "text_encoder_target_module": ["CLIPAttention", "CLIPMLP"],
                      "text_encoder_target_name": []})
    yield kohya
    for n, v in saved.items():
        setattr(cls, n, v)
