"""bench/train_bench.py's SDXL rows (issue 16): what they train, and the --cpu dry run on the tiny SDXL."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from lorakit.config.load import load_config

BENCH = Path(__file__).resolve().parents[1] / "bench" / "train_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name, batch", [("sdxl_lora_b1", 1), ("sdxl_lora_b4", 4)])
def test_sdxl_rows_gpu_setting(bench, tmp_path, name, batch):
    values = bench.config_values(name, tmp_path / "sd15-random", tmp_path / "data", tmp_path, False, 12, 4, {})
    cfg = load_config(None, [], values)
    assert cfg.pretrained_model_name_or_path == str(tmp_path / "sdxl-random")
    assert (cfg.resolution, cfg.train_batch_size, cfg.mixed_precision) == ((1024, 1024), batch, "bf16")
    assert cfg.gradient_checkpointing and cfg.cache_text_encoder_outputs and cfg.network_train_unet_only
    assert (cfg.network_type, cfg.network_dim, cfg.max_train_steps) == ("lora", 8, 16)


def test_sdxl_row_cpu_dry_run(bench, tmp_path):
    model, data = bench.model_and_data(tmp_path, cpu=True, sdxl=True)
    assert (tmp_path / "tiny-sdxl" / "model_index.json").is_file()
    values = bench.config_values("sdxl_lora_b4", model, data, tmp_path, True, 2, 1, {})
    assert values["resolution"] == 64 and values["train_batch_size"] == 4
    row = bench.run_config("sdxl_lora_b4", values, 2, 1)
    assert row["batch"] == 4 and row["res"] == 64 and row["img_s"] > 0
