"""The kohya key table (lorakit/config/kohya_keys.py): every key of the kohya world is classified, GUI JSONs
built from the GUI's own field list import, every problem is reported at once, and a config round-trips
through `lorakit config show --as toml|kohya-json`."""
from __future__ import annotations

import json
import tomllib

import pytest

from kohya_gui_fields import GUI_DEFAULTS
from lorakit.cli import main
from lorakit.config import kohya_keys
from lorakit.config.kohya_doc import DOC, render_doc
from lorakit.config.kohya_keys import (ALL_KEYS, FAMILY_SWITCHES, GUI_KEYS, MAPPED, NEUTRAL, NETWORK_ARGS, REFUSED,
                                       RUNTIME, SD_SCRIPTS_ARGS, lookup)
from lorakit.config.load import load, load_config
from lorakit.config.schema import TrainConfig
from lorakit.errors import ConfigError


def gui_json(tmp_path, name="gui.json", **changes):
    p = tmp_path / name
    p.write_text(json.dumps({**GUI_DEFAULTS, **changes}), encoding="utf-8")
    return p


def test_every_kohya_key_is_classified():
    assert list(GUI_DEFAULTS) == list(GUI_KEYS) and len(GUI_KEYS) == 287  # the transcription is the table's list
    for name in ALL_KEYS:
        entry = lookup(name)
        assert entry is not None, name
        if entry.kind == MAPPED:
            assert all(f.strip().rstrip("*").rstrip("_") in TrainConfig.model_fields or f.startswith("(")
                       or f.strip().endswith("*") for f in entry.field.split(",")), (name, entry.field)
        else:
            assert entry.why, name
    kinds = {k: sum(lookup(n).kind == k for n in ALL_KEYS) for k in (MAPPED, RUNTIME, NEUTRAL, REFUSED)}
    assert sum(kinds.values()) == len(ALL_KEYS) and min(kinds.values()) > 10, kinds


def test_a_schema_field_supersedes_a_neutral_only_entry(monkeypatch):
    """When the schema gains a field named like a neutral-only key, the key maps by name: no table edit."""
    assert lookup("use_scalar").kind == NEUTRAL
    monkeypatch.setattr(kohya_keys, "FIELDS", {**TrainConfig.model_fields, "use_scalar": None,
                                                "conv_block_dims": None})
    assert (lookup("use_scalar").kind, lookup("use_scalar").field) == (MAPPED, "use_scalar")
    assert (lookup("conv_dims").kind, lookup("conv_dims").field) == (MAPPED, "conv_block_dims")  # the old name
    assert lookup("xformers").kind == RUNTIME  # runtime-only entries stay


def test_the_helpers_keys_are_neutral_only_or_mapped():
    for name in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
                 "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "loraplus_lr_ratio",
                 "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio", "train_norm",
                 "stop_text_encoder_training", "save_state_on_train_end", "v_pred_like_loss", "weighted_captions",
                 "full_bf16", "log_with", "fp8_base", "ip_noise_gamma_random_strength", "masked_loss"):
        entry = lookup(name)
        if name in TrainConfig.model_fields:
            assert (entry.kind, entry.field) == (MAPPED, name)
        else:
            assert entry.kind == NEUTRAL, name


def test_gui_defaults_import(tmp_path):
    loaded = load(gui_json(tmp_path))
    cfg, ignored = loaded.cfg, dict(loaded.ignored)
    assert cfg.network_type == "lora" and (cfg.network_dim, cfg.network_alpha) == (8, 1.0)
    assert cfg.learning_rate == 1e-4 and cfg.lr_scheduler == "cosine" and cfg.lr_warmup_steps == pytest.approx(0.1)
    assert cfg.optimizer_type == "AdamW8bit" and cfg.max_train_steps == 1600 and cfg.max_train_epochs == 1
    assert cfg.vae_batch_size == 1 and cfg.bucket_reso_steps == 64  # the GUI's unset 0 -> the default
    assert cfg.enable_bucket and cfg.bucket_no_upscale and cfg.max_bucket_reso == 2048
    for key in ("xformers", "num_processes", "huggingface_token", "ae", "sd3_t5xxl", "anima_vae",
                "sdxl_no_half_vae", "sdxl_cache_text_encoder_outputs"):
        assert key in ignored, key
    # sdxl = false: the config says SD1.x/2.x (the loader checks it against the weights)
    assert cfg.sdxl is False and cfg.no_half_vae is False and "sdxl" not in ignored
    assert ignored["gpu_ids"].startswith("accelerate launch")
    assert len(loaded.ignored) == len({k for k, _ in loaded.ignored})  # one line per key


def test_gui_unset_values(tmp_path):
    cfg = load_config(gui_json(tmp_path, vae_batch_size=0, bucket_reso_steps=1, max_timestep=0, epoch=0))
    assert (cfg.vae_batch_size, cfg.bucket_reso_steps, cfg.max_timestep, cfg.max_train_epochs) == (1, 64, None, None)


@pytest.mark.parametrize("switch", sorted(FAMILY_SWITCHES))
def test_family_switch_is_refused_by_name(tmp_path, switch, capsys):
    p = gui_json(tmp_path, **{switch: True})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == switch and FAMILY_SWITCHES[switch] in e.value.message
    assert main(["plan", str(p)]) == 2
    assert switch in capsys.readouterr().err


def test_all_problems_at_once(tmp_path, capsys):
    text = json.dumps({**GUI_DEFAULTS, "network_dim": "eight", "netwrok_alpha": 4, "train_norm": True,
                       "LoRA_type": "LyCORIS/LoCon", "use_scalar": True, "resume": "out/last-state",
                       "loraplus_lr_ratio": 16, "vae_batch_size": 0})
    p = tmp_path / "bad.json"
    p.write_text(text[:-1] + ', "seed": 1, "seed": 2}', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = e.value.message
    for part in ("network_dim", "'eight'", "unknown key 'netwrok_alpha'", "did you mean 'network_alpha'",
                 "'seed' is set twice", "use_scalar = True"):
        assert part in msg, part
    # resume, train_norm and LoRA+ are schema fields: mapped, so not among the problems
    for mapped in ("resume = ", "train_norm = ", "loraplus_lr_ratio = "):
        assert mapped not in msg, mapped
    # a key some kohya version knows is named, never "did you mean"-ed into another key
    assert msg.count("did you mean") == 1
    assert main(["plan", str(p)]) == 2
    err = capsys.readouterr().err
    assert "netwrok_alpha" in err and "eight" in err


def test_known_keys_get_no_did_you_mean(tmp_path):
    res = load(_write(tmp_path, "k.json", {"LoRA_type": "Standard", "rescaled": True}))
    assert "rescaled" in dict(res.ignored)  # an OFT arg, not Standard's: ignored, not "did you mean huber_scale"
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "u.json", {"additional_parameters": "--use_lion_optimizer"}))
    assert "use_lion_optimizer" in e.value.message and "did you mean" not in e.value.format()
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "s.json", {"additional_parameters": "--use_scalar"}))
    assert "network arg" in e.value.message and "did you mean" not in e.value.format()


def _write(tmp_path, name, obj):
    p = tmp_path / name
    p.write_text(json.dumps(obj), encoding="utf-8")
    return p


def test_network_args_table_keys(tmp_path):
    """Block-wise and LoRA+ keys in --network_args go through the table too."""
    p = _write(tmp_path, "n.json", {"additional_parameters": '--network_args "loraplus_lr_ratio=0" "block_dims="'})
    cfg = load_config(p)  # neutral: accepted, as unset
    assert (cfg.loraplus_lr_ratio, cfg.block_dims) == (None, None)
    dims = ",".join(["4"] * 25)
    cfg = load_config(_write(tmp_path, "m.json", {"additional_parameters": '--network_args "loraplus_lr_ratio=16" '
                                                  f'"train_norm=True" "block_dims={dims}" '
                                                  '"down_lr_weight=1,1,1,1,1,1,1,1,1,1,1,0.5"'}))
    assert (cfg.loraplus_lr_ratio, cfg.train_norm, cfg.block_dims) == (16, True, [4] * 25)
    assert cfg.down_lr_weight == [1.0] * 11 + [0.5]
    for name in NETWORK_ARGS:
        assert lookup(name) is not None


def test_sdscripts_toml_uses_the_table(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('network_module = "networks.lora"\nxformers = true\nhuggingface_repo_id = "a/b"\n'
                 'deepspeed = true\nmax_resolution = "512,512"\nnetwrok_dim = 4\n', encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = e.value.message
    assert "deepspeed = True" in msg and "DeepSpeed" in msg
    assert "'max_resolution' is a kohya_ss GUI key" in msg and "did you mean 'network_dim'" in msg
    assert "xformers" not in msg and "huggingface_repo_id" not in msg  # runtime-only: ignored
    assert all(k in SD_SCRIPTS_ARGS for k in ("xformers", "huggingface_repo_id", "deepspeed"))


def test_config_show_round_trips(tmp_path, capsys):
    p = gui_json(tmp_path, LoRA_type="LyCORIS/LoKr", factor=4, network_dim=16, network_alpha=8, optimizer="AdamW",
                 multires_noise_iterations=6, noise_offset_type="Multires", max_resolution="768,512",
                 additional_parameters="--zero_terminal_snr --caption_prefix 'a photo of'")
    cfg = load_config(p)
    assert main(["config", "show", str(p)]) == 0
    out, err = capsys.readouterr()
    assert "lorakit: ignored xformers: attention kernel" in err  # one line per ignored key, on stderr
    tomllib.loads(out)  # valid TOML (no `null`)
    t = tmp_path / "back.toml"
    t.write_text(out, encoding="utf-8")
    assert load_config(t).model_dump(mode="json") == cfg.model_dump(mode="json")
    assert main(["config", "show", str(p), "--as", "kohya-json"]) == 0
    out = capsys.readouterr().out
    gui = json.loads(out)
    assert set(gui) <= set(GUI_KEYS)  # only keys today's GUI knows
    assert gui["LoRA_type"] == "LyCORIS/LoKr" and gui["factor"] == 4 and gui["max_resolution"] == "768,512"
    assert "--zero_terminal_snr" in gui["additional_parameters"]
    j = tmp_path / "back.json"
    j.write_text(out, encoding="utf-8")
    assert load_config(j).model_dump(mode="json") == cfg.model_dump(mode="json")


def test_docs_kohya_md_is_current():
    text = DOC.read_text(encoding="utf-8")
    assert text == render_doc(text), "run: python -m lorakit.config.kohya_doc"


def test_gui_defaults_json_trains_two_steps(tmp_path, tiny_model_dir, capsys):
    """All 287 keys at the GUI's defaults: AdamW8bit needs bitsandbytes (exit 2 naming it where it is
    missing); with the optimizer switched the same JSON trains."""
    import importlib.util

    import torch

    from lorakit.adapters.file import read_adapter_file
    from lorakit.demo import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    argv = ["--model", str(tiny_model_dir), "--data", str(data), "--set", "max_train_steps=2",
            "--set", "resolution=64", "--set", "min_bucket_reso=64", "--quiet"]
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        assert main(["train", str(gui_json(tmp_path)), "--output", str(tmp_path / "o8"), *argv]) == 2
        assert "bitsandbytes" in capsys.readouterr().err
    p = gui_json(tmp_path, "adamw.json", optimizer="AdamW")
    assert main(["train", str(p), "--output", str(tmp_path / "o"), *argv]) == 0, capsys.readouterr().err
    assert "lorakit: ignored xformers" in capsys.readouterr().err
    _, meta = read_adapter_file(tmp_path / "o" / "last.safetensors")
    assert meta["ss_steps"] == "2" and meta["ss_network_dim"] == "8"


def test_block_keys_are_read_for_networks_lora_types_only(tmp_path):
    """The GUI passes block_dims & co. only for Standard / Kohya LoCon (networks.lora)."""
    dims = ",".join(["4"] * 25)
    res = load(_write(tmp_path, "l.json", {"LoRA_type": "LyCORIS/LoHa", "block_dims": dims}))
    assert dict(res.ignored)["block_dims"] == "not a network arg of LoRA_type 'LyCORIS/LoHa'"
    assert res.cfg.block_dims is None
    for lora_type in ("Standard", "Kohya LoCon"):
        cfg = load_config(_write(tmp_path, "s.json", {"LoRA_type": lora_type, "block_dims": dims,
                                                      "down_lr_weight": "1,1,1,1,1,1,1,1,1,1,1,0.5"}))
        assert cfg.block_dims == [4] * 25 and cfg.down_lr_weight == [1.0] * 11 + [0.5], lora_type


def test_gui_dataset_config_is_read(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "ds.toml").write_text('[general]\nbatch_size = 2\n[[datasets]]\nresolution = 512\n'
                                      '[[datasets.subsets]]\nimage_dir = "imgs"\nnum_repeats = 3\n', encoding="utf-8")
    loaded = load(gui_json(tmp_path, dataset_config="ds.toml", train_data_dir="elsewhere", optimizer="AdamW"))
    cfg = loaded.cfg
    assert cfg.train_batch_size == 2 and cfg.train_data_dir is None
    assert [(s["image_dir"], s["num_repeats"]) for s in cfg.dataset_subsets] == [("imgs", 3)]
    assert "train_data_dir" in dict(loaded.ignored)
    with pytest.raises(ConfigError) as e:
        load_config(gui_json(tmp_path, "m.json", dataset_config="missing.toml", network_dim="x"))
    assert "dataset_config file not found" in e.value.message and "network_dim" in e.value.message
