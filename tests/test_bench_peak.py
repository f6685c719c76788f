"""bench/peak_cpu.py (the peak device memory of a step, predicted with fake tensors) on the tiny models:
it counts what a run holds, and not what it moved to the host. In a subprocess: the script patches
torch and lorakit functions for its fake run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def weight_bytes(*modules: torch.nn.Module) -> int:
    """Parameter bytes as the CUDA caching allocator hands them out (multiples of 512)."""
    return sum(max(512, -(-p.numel() * p.element_size() // 512) * 512) for m in modules for p in m.parameters())


def test_predicted_peak_holds_the_frozen_weights_on_the_device_only(tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from lorakit.models.tiny import tiny_text_config, tiny_unet_config
    from lorakit.models.tiny_sdxl import tiny_sdxl_text_configs, tiny_sdxl_unet_config

    out = subprocess.run([sys.executable, "bench/peak_cpu.py", "--tiny", "--json", "--workdir", str(tmp_path),
                          "--configs", "lora_b1", "sdxl_lora_b1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r["config"]: r for r in (json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))}
    # float32 at 64 px (the tiny setting): the UNet and the trained text encoder stay on the device
    sd1 = weight_bytes(UNet2DConditionModel(**tiny_unet_config(False)), CLIPTextModel(tiny_text_config(False)))
    assert rows["lora_b1"]["split"]["frozen weights"] == sd1
    assert not rows["lora_b1"]["on_host"]
    assert rows["lora_b1"]["at"] == "step 2" and rows["lora_b1"]["peak"] == sum(rows["lora_b1"]["split"].values())
    assert rows["lora_b1"]["tflop"] > 0  # the step's FLOPs, counted on the same fake step
    # SDXL, UNet only with cached outputs: the captions are encoded with the UNet on the host, then
    # the encoders go there and the UNet comes back: the peak holds one or the other, never both (the
    # tiny SDXL's encoders are the larger, so here the encoders and their activations)
    xl = rows["sdxl_lora_b1"]
    te1, te2 = tiny_sdxl_text_configs()
    encoders = weight_bytes(CLIPTextModel(te1), CLIPTextModelWithProjection(te2))
    unet = weight_bytes(UNet2DConditionModel(**tiny_sdxl_unet_config()))
    assert xl["on_host"] and xl["at"] == "caption prefill"
    assert xl["split"]["frozen weights"] == encoders > unet
    assert xl["peak"] == sum(xl["split"].values())
