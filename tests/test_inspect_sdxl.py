"""`lorakit inspect` on SDXL adapter files written by lorakit on the tiny SDXL: it names the family (from
ss_base_model_version, else from kohya's SDXL module names), counts each text encoder's modules, and
says which UIs load the file (the per-type answers of SD1 files)."""
from __future__ import annotations

import re

import pytest
import torch

from adapters_helpers import cfg
from lorakit.adapters.declare import FileContext
from lorakit.adapters.file import save_adapter_file
from lorakit.adapters.network import create_network
from lorakit.cli import main
from lorakit.models.tiny_sdxl import build_tiny_sdxl

SDXL_MD = {"ss_base_model_version": "sdxl_base_v1-0", "ss_v2": "False"}


@pytest.fixture(scope="module")
def model():
    return build_tiny_sdxl(seed=4)


def write(tmp_path, model, name, metadata, **kw):
    net = create_network(cfg(**kw), model.unet, model.text_encoders, unet_module_name=model.unet_module_name)
    path = tmp_path / f"{name}.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float16),
                      {"ss_network_module": net.network_module_name, **metadata}, overwrite=True)
    return path, net


def run(capsys, path) -> str:
    assert main(["inspect", str(path)]) == 0
    return capsys.readouterr().out


def test_sdxl_lora_file(tmp_path, model, capsys):
    path, net = write(tmp_path, model, "lora", SDXL_MD)
    out = run(capsys, path)
    te1 = sum(1 for m in net.text_encoder_modules if m.startswith("lora_te1_"))
    te2 = sum(1 for m in net.text_encoder_modules if m.startswith("lora_te2_"))
    assert te1 and te2 and te1 + te2 == len(net.text_encoder_modules)
    assert "model:       SDXL (ss_base_model_version sdxl_base_v1-0)" in out
    n = len(net.unet_modules) + te1 + te2
    assert f"modules:     {n} (UNet {len(net.unet_modules)}, text encoder 1 {te1}, text encoder 2 {te2})" in out
    assert re.search(rf"text encoder 2\s+lora\s+dim 4, alpha 2, scale 0.5: {te2} modules", out)
    for ui in ("A1111", "Forge", "ComfyUI", "diffusers", "LyCORIS"):
        assert re.search(ui + r"\s+yes", out), ui
    assert "an SDXL adapter" in out


def test_sdxl_family_from_names(tmp_path, model, capsys):
    path, _ = write(tmp_path, model, "nometa", {})
    assert "model:       SDXL (text-encoder modules named lora_te1_ / lora_te2_)" in run(capsys, path)
    # UNet only (SDXL LoRAs usually train no text encoder) and no metadata: the original-layout UNet names
    path, net = write(tmp_path, model, "unet", {}, network_train_unet_only=True)
    out = run(capsys, path)
    assert not net.text_encoder_modules and f"modules:     {len(net.unet_modules)} (UNet {len(net.unet_modules)})" in out
    assert "model:       SDXL (UNet modules named in SDXL's original layout" in out


def test_sdxl_loha_file_per_type_answers(tmp_path, model, capsys):
    path, _ = write(tmp_path, model, "loha", SDXL_MD, network_type="loha", conv_dim=2, conv_alpha=1.0)
    out = run(capsys, path)
    assert "model:       SDXL" in out and "loha" in out
    assert re.search(r"diffusers\s+no", out) and re.search(r"A1111\s+yes", out) and re.search(r"ComfyUI\s+yes", out)


def test_family_rules():
    t = torch.zeros(4, 8)
    sd1_sgm = {"lora_unet_input_blocks_1_1_proj_in": {"lora_down.weight": t}}   # SD1 converted to the LDM layout
    sdxl_sgm = {"lora_unet_input_blocks_4_1_proj_in": {"lora_down.weight": t}}  # SDXL: attention from block 4
    sd1 = {"lora_unet_down_blocks_0_attentions_0_proj_in": {"lora_down.weight": t}}
    assert FileContext(sd1_sgm, {}).family()[0] == "SD1.x"
    assert FileContext(sdxl_sgm, {}).family()[0] == "SDXL"
    assert FileContext(sd1, {}).family()[0] == "SD1.x"
    assert FileContext(sdxl_sgm, {"ss_base_model_version": "sd_v1"}).family() == ("SD1.x", "ss_base_model_version sd_v1")
    assert FileContext(sd1, {"ss_base_model_version": "sd_v2"}).family()[0] == "SD2.x"
    assert FileContext(sd1, {"ss_base_model_version": "sdxl_base_v1-0"}).family()[0] == "SDXL"


def test_sd1_file_says_sd1(tmp_path, capsys):
    from adapters_helpers import tiny_models

    unet, te = tiny_models()
    net = create_network(cfg(), unet, te)
    path = tmp_path / "sd1.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float16), {"ss_base_model_version": "sd_v1"}, overwrite=True)
    out = run(capsys, path)
    assert "model:       SD1.x (ss_base_model_version sd_v1)" in out and "an SDXL adapter" not in out
