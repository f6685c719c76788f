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
