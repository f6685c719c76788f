"""End to end from a kohya_ss GUI JSON with "sdxl": true: `lorakit train` through the CLI on a tiny SDXL
written as a diffusers folder, for every LoRA_type the GUI importer knows, and the family check: a JSON
whose sdxl flag contradicts the weights exits 2 naming both families."""
from __future__ import annotations

import json

import pytest

from lorakit.adapters.file import read_adapter_file
from lorakit.cli import main
from lorakit.config.kohya import LORA_TYPES
from lorakit.demo import make_synthetic_dataset
from lorakit.inspect import inspect_file



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("sdxl-data"), n_images=2, repeats=1)


def gui_json(tmp_path, model, data, **kw):
    raw = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(tmp_path / "out"),
           "output_name": "last", "sdxl": True, "sdxl_no_half_vae": True, "sdxl_cache_text_encoder_outputs": False,
           "LoRA_type": "Standard", "network_dim": 4, "network_alpha": 2, "conv_dim": 2, "conv_alpha": 1,
           "max_resolution": "64,64", "min_bucket_reso": 64, "max_bucket_reso": 128, "enable_bucket": True,
           "optimizer": "AdamW", "learning_rate": 1e-3, "unet_lr": 1e-3, "text_encoder_lr": 5e-4,
           "lr_scheduler": "constant", "lr_warmup": 0, "max_train_steps": 2, "epoch": 1, "save_every_n_epochs": 0,
           "train_batch_size": 1, "mixed_precision": "no", "seed": 7, "cache_latents": True, "caption_extension": ".txt",
           **kw}
    path = tmp_path / "sdxl.json"
    path.write_text(json.dumps(raw), encoding="utf-8")
    return path


def _train(path, capsys):
    code = main(["train", str(path), "--quiet"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("lora_type", sorted(LORA_TYPES))
def test_gui_json_trains_tiny_sdxl(lora_type, tiny_sdxl_dir, data, tmp_path, capsys):
    code, err = _train(gui_json(tmp_path, tiny_sdxl_dir, data, LoRA_type=lora_type), capsys)
    assert code == 0, err
    tensors, meta = read_adapter_file(tmp_path / "out" / "last.safetensors")
    assert meta["ss_steps"] == "2" and meta["ss_base_model_version"] == "sdxl_base_v1-0"
    # kohya's SDXL names: the UNet's original (SGM) layout, one prefix per text encoder
    assert any(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for k in tensors), sorted(tensors)[:5]
    assert not any(k.startswith("lora_unet_down_blocks_") for k in tensors)
    for prefix in ("lora_te1_", "lora_te2_"):
        assert any(k.startswith(prefix) for k in tensors), prefix
    # the LoRA_type's own algorithm, as `lorakit inspect` reads it from the file (the LoCon types' 3x3
    # convs, conv_dim 2 here, read as locon beside their lora layers)
    network_type = LORA_TYPES[lora_type][0]
    algos = set(inspect_file(tmp_path / "out" / "last.safetensors").algorithms())
    convs = network_type == "locon" or lora_type == "Kohya LoCon"
    assert algos == ({"lora", "locon"} if convs else {network_type}), algos


def test_gui_json_cached_text_encoder_outputs_trains_unet_only(tiny_sdxl_dir, data, tmp_path, capsys):
    path = gui_json(tmp_path, tiny_sdxl_dir, data, sdxl_cache_text_encoder_outputs=True, text_encoder_lr=0,
                    network_train_unet_only=True)
    code, err = _train(path, capsys)
    assert code == 0, err
    tensors, meta = read_adapter_file(tmp_path / "out" / "last.safetensors")
    assert tensors and all(k.startswith("lora_unet_") for k in tensors)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"


def test_sdxl_true_with_sd1_model_exits_2(tiny_model_dir, data, tmp_path, capsys):
    code, err = _train(gui_json(tmp_path, tiny_model_dir, data), capsys)
    assert code == 2 and "sdxl = true" in err and "SD1.x" in err, err
    assert not (tmp_path / "out" / "last.safetensors").exists()


def test_sdxl_false_with_sdxl_model_exits_2(tiny_sdxl_dir, data, tmp_path, capsys):
    code, err = _train(gui_json(tmp_path, tiny_sdxl_dir, data, sdxl=False), capsys)
    assert code == 2 and "sdxl = false" in err and "SDXL" in err, err
    assert not (tmp_path / "out" / "last.safetensors").exists()
