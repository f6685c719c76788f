"""SDXL keys of the kohya world: the GUI's sdxl checkbox and its SDXL-only checkboxes, sd-scripts'
sdxl_train_network.py arguments (text_encoder_lr with one value per text encoder, no_half_vae,
cache_text_encoder_outputs) and lorakit's own TOML, each with a worked example."""
from __future__ import annotations

import json

import pytest

from lorakit.config.export import to_kohya_json, to_toml
from lorakit.config.load import load, load_config
from lorakit.errors import ConfigError


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text if isinstance(text, str) else json.dumps(text), encoding="utf-8")
    return p


def test_gui_sdxl_checkboxes(tmp_path):
    on = load(write(tmp_path, "on.json", {"sdxl": True, "sdxl_no_half_vae": True, "text_encoder_lr": 0,
                                          "sdxl_cache_text_encoder_outputs": True}))
    assert (on.cfg.sdxl, on.cfg.no_half_vae, on.cfg.cache_text_encoder_outputs) == (True, True, True)
    # the GUI passes --no_half_vae / --cache_text_encoder_outputs only with sdxl ticked
    off = load(write(tmp_path, "off.json", {"sdxl": False, "sdxl_no_half_vae": True,
                                            "sdxl_cache_text_encoder_outputs": True}))
    ignored = dict(off.ignored)
    assert (off.cfg.sdxl, off.cfg.no_half_vae, off.cfg.cache_text_encoder_outputs) == (False, False, None)
    assert "sdxl is false" in ignored["sdxl_no_half_vae"] and "sdxl is false" in ignored["sdxl_cache_text_encoder_outputs"]
    # a JSON from before the GUI had the checkbox: the family is detected from the weights
    assert load_config(write(tmp_path, "old.json", {"network_dim": 8})).sdxl is None


def test_gui_text_encoder_lr_two_values(tmp_path):
    # sd-scripts' --text_encoder_lr takes several values; networks.lora trains both SDXL encoders at the first
    loaded = load(write(tmp_path, "a.json", {"sdxl": True, "text_encoder_lr": 1e-4,
                                             "additional_parameters": "--text_encoder_lr 3e-5 1e-5"}))
    assert loaded.cfg.text_encoder_lr == pytest.approx(3e-5)
    assert "1e-5 not used" in dict(loaded.ignored)["--text_encoder_lr"]
    same = load(write(tmp_path, "b.json", {"additional_parameters": "--text_encoder_lr 2e-5 2e-5"}))
    assert same.cfg.text_encoder_lr == pytest.approx(2e-5) and "--text_encoder_lr" not in dict(same.ignored)


SDXL_TOML = """
[model_arguments]
pretrained_model_name_or_path = "sd_xl_base_1.0.safetensors"
no_half_vae = true

[additional_network_arguments]
network_module = "networks.lora"
network_dim = 32
network_train_unet_only = true
cache_text_encoder_outputs = true

[optimizer_arguments]
optimizer_type = "AdamW"
learning_rate = 1e-4
text_encoder_lr = TE_LR
"""


@pytest.mark.parametrize("te_lr, expect, note", [("[2e-5, 2e-5]", 2e-5, False), ("[3e-5, 1e-5]", 3e-5, True),
                                                 ("[]", None, False), ("5e-5", 5e-5, False)])
def test_sdscripts_sdxl_toml(tmp_path, te_lr, expect, note):
    loaded = load(write(tmp_path, "sdxl.toml", SDXL_TOML.replace("TE_LR", te_lr)))
    cfg = loaded.cfg
    assert cfg.no_half_vae and cfg.cache_text_encoder_outputs and cfg.network_train_unet_only
    assert cfg.sdxl is None  # sd-scripts' script name says SDXL, not the TOML: detected from the weights
    assert cfg.text_encoder_lr == (pytest.approx(expect) if expect else None)
    assert ("text_encoder_lr" in dict(loaded.ignored)) is note


def test_own_toml_sdxl(tmp_path):
    cfg = load_config(write(tmp_path, "a.toml", "[model]\nsdxl = true\nno_half_vae = true\n"
                                                "[optimizer]\ntext_encoder_lr = [1e-4, 1e-4]\n"))
    assert (cfg.sdxl, cfg.no_half_vae, cfg.text_encoder_lr) == (True, True, 1e-4)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "b.toml", "[optimizer]\ntext_encoder_lr = [1e-4, 5e-5]\n"))
    assert e.value.key == "text_encoder_lr" and "first value" in str(e.value) and "5e-05" in str(e.value)


def test_adafactor_scheduler(tmp_path):
    # the SDXL adafactor preset: lr_scheduler "adafactor" is what Adafactor with relative_step uses anyway
    ok = load(write(tmp_path, "a.json", {"optimizer": "Adafactor", "optimizer_args": "", "lr_scheduler": "adafactor"}))
    assert ok.cfg.lr_scheduler == "constant" and "AdafactorSchedule" in dict(ok.ignored)["lr_scheduler"]
    for name, raw in (("b.json", {"optimizer": "AdamW", "lr_scheduler": "adafactor"}),
                      ("c.json", {"optimizer": "Adafactor", "optimizer_args": "relative_step=False",
                                  "lr_scheduler": "adafactor"})):
        with pytest.raises(ConfigError) as e:
            load_config(write(tmp_path, name, raw))
        assert e.value.key == "lr_scheduler" and "relative_step" in str(e.value), name
    toml = load(write(tmp_path, "d.toml", '[optimizer_arguments]\noptimizer_type = "Adafactor"\n'
                                          'lr_scheduler = "adafactor"\nnetwork_module = "networks.lora"\n'))
    assert toml.cfg.lr_scheduler == "constant" and toml.cfg.optimizer_type == "Adafactor"


def test_stop_text_encoder_training_pct(tmp_path):
    assert load_config(write(tmp_path, "a.json", {"stop_text_encoder_training_pct": 0})).network_dim
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "b.json", {"stop_text_encoder_training_pct": 20}))
    assert e.value.key == "stop_text_encoder_training_pct" and "set stop_text_encoder_training_pct to 0" in str(e.value)


def test_sdxl_config_exports(tmp_path):
    cfg = load_config(write(tmp_path, "a.json", {"sdxl": True, "sdxl_no_half_vae": True, "text_encoder_lr": 0,
                                                 "sdxl_cache_text_encoder_outputs": True}))
    out = json.loads(to_kohya_json(cfg))
    assert out["sdxl"] is True and out["sdxl_no_half_vae"] is True and "--no_half_vae" not in out["additional_parameters"]
    for text, name in ((json.dumps(out), "b.json"), (to_toml(cfg), "b.toml")):
        assert load_config(write(tmp_path, name, text)).model_dump() == cfg.model_dump(), name
    unset = load_config(write(tmp_path, "c.toml", "[model]\nno_half_vae = true\n"))
    out = json.loads(to_kohya_json(unset))
    assert "--no_half_vae" in out["additional_parameters"]  # the GUI's checkbox acts only with sdxl
    assert "sdxl" not in out and load_config(write(tmp_path, "c.json", json.dumps(out))).sdxl is None


@pytest.mark.parametrize("flag, expect", [("true", True), ("false", None)])
def test_cache_to_disk_turns_the_cache_on(tmp_path, flag, expect):
    # sd-scripts (verify_sdxl_training_args): --cache_text_encoder_outputs_to_disk sets cache_text_encoder_outputs
    text = f'network_module = "networks.lora"\nnetwork_train_unet_only = true\ncache_text_encoder_outputs_to_disk = {flag}\n'
    assert load_config(write(tmp_path, "a.toml", text)).cache_text_encoder_outputs is expect
    gui = load_config(write(tmp_path, "b.json", {"text_encoder_lr": 0,
                                                 "additional_parameters": "--cache_text_encoder_outputs_to_disk"}))
    assert gui.cache_text_encoder_outputs is True


@pytest.mark.parametrize("fmt, name", [("kohya-json", "out.json"), ("toml", "out.toml")])
def test_sdxl_preset_config_show_round_trip(tmp_path, capsys, fmt, name):
    from pathlib import Path

    from lorakit.cli import main

    preset = Path(__file__).parent / "fixtures" / "kohya_presets_sdxl" / "SDXL - LoKR v1.0.json"
    assert main(["config", "show", str(preset), "--as", fmt]) == 0
    text = capsys.readouterr().out
    cfg = load_config(write(tmp_path, name, text))
    assert cfg.model_dump() == load_config(preset).model_dump()
    assert (cfg.sdxl, cfg.no_half_vae, cfg.network_type, cfg.resolution) == (True, True, "lokr", (1024, 1024))


def test_sdxl_and_v2_refused_before_loading(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "a.json", {"sdxl": True, "v2": True}))
    assert "sdxl and v2 are both true" in str(e.value) and "v2 = false" in str(e.value)
