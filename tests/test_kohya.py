"""kohya_ss GUI JSON import: the three seed-guide configs (byte for byte) and section 1 of docs/kohya-rules.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from lorakit.config.kohya import import_kohya_json, parse_additional_parameters
from lorakit.config.load import build_config, load_config
from lorakit.errors import ConfigError
from lorakit.optim.schedulers import warmup_steps_for

# The JSON blocks of the two seed guides (April 2023 DAdaptation guide and July 2023 Prodigy
# guide; docs/kohya.md "The seed guides"), byte for byte, trailing commas included.
SEEDS = Path(__file__).resolve().parent / "fixtures" / "seed_guides"  # bench/ reads them too
DADAPT_LOHA = (SEEDS / "dadapt_loha.json").read_text(encoding="utf-8")
PRODIGY_IA3 = (SEEDS / "prodigy_ia3.json").read_text(encoding="utf-8")
PRODIGY_LOKR = (SEEDS / "prodigy_lokr.json").read_text(encoding="utf-8")



def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def resolved(res, file):
    """The config the mapped values give."""
    return build_config(res.values, file)


def test_seed_blocks_are_the_guides_bytes():
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference"  # shared/ beside the checkout
    if not ref.is_dir():
        pytest.skip("reference guides not present")
    blocks = []
    for f in sorted(ref.glob("0*.txt")):
        blocks += re.findall(r"```\n(\{.*?\n\})\n```", f.read_text(encoding="utf-8"), re.S)
    assert [b + "\n" for b in blocks] == [DADAPT_LOHA, PRODIGY_IA3, PRODIGY_LOKR]


def test_seed_dadaptation_loha(tmp_path):
    p = write(tmp_path, "a.json", DADAPT_LOHA)
    res = import_kohya_json(p)
    cfg = resolved(res, str(p))
    assert cfg.network_type == "loha"
    assert (cfg.network_dim, cfg.network_alpha, cfg.conv_dim, cfg.conv_alpha) == (8, 8.0, 8, 8.0)
    assert cfg.optimizer_type == "DAdaptation"  # = DAdaptAdamPreprint (docs/optimizers.md)
    assert cfg.optimizer_args == {"decouple": True, "weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert (cfg.learning_rate, cfg.unet_lr, cfg.text_encoder_lr) == (1.0, 1.0, 1.0)
    assert cfg.lr_scheduler == "constant" and cfg.lr_scheduler_type is None and cfg.lr_warmup_steps == 0
    assert cfg.resolution == (576, 576) and cfg.seed == 31337
    assert cfg.max_train_epochs is None and cfg.max_train_steps is None  # no epoch key: 1600-step default
    assert cfg.max_token_length == 150 and cfg.max_data_loader_n_workers == 1
    assert cfg.gradient_accumulation_steps == 1 and cfg.save_every_n_epochs == 1
    assert cfg.shuffle_caption and cfg.cache_latents and cfg.gradient_checkpointing
    assert cfg.persistent_data_loader_workers and not cfg.v2 and not cfg.v_parameterization
    assert cfg.sample_sampler == "euler_a" and cfg.sample_every_n_epochs == 1
    assert cfg.sample_prompts.startswith("masterpiece, best quality, TRIGGERWORD")
    ignored = dict(res.ignored)
    assert cfg.save_model_as == "safetensors"
    for key in ("color_aug", "flip_aug", "random_crop"):  # false in the file: maps onto the field
        assert getattr(cfg, key) is False, key
    assert "model_list" in ignored and "no_token_padding" in ignored
    # not in the file: the GUI's widget defaults, not sd-scripts' (off, off, 1024, no)
    assert (cfg.enable_bucket, cfg.bucket_no_upscale, cfg.max_bucket_reso, cfg.mixed_precision) == (
        True, True, 2048, "fp16")
    assert ignored["mixed_precision"] == "not in the file: the GUI default (fp16) is used"
    assert ignored["bucket_no_upscale"] == "not in the file: the GUI default (on) is used"
    assert cfg.save_precision == "fp16" and cfg.min_bucket_reso == 256
    assert cfg.noise_offset == 0 and cfg.min_snr_gamma == 3  # "0" maps onto the field (off)
    assert res.network_args == {}


def test_seed_prodigy_ia3(tmp_path):
    p = write(tmp_path, "b.json", PRODIGY_IA3)
    res = import_kohya_json(p)
    cfg = resolved(res, str(p))
    assert cfg.network_type == "ia3"
    assert cfg.conv_dim is None and cfg.network_dim == 8  # iA3 has no rank; GUI default dim
    assert cfg.optimizer_type == "Prodigy"
    assert cfg.optimizer_args == {"betas": (0.9, 0.99), "d0": 1e-3, "d_coef": 1.0, "weight_decay": 0.0,
                                  "safeguard_warmup": False, "use_bias_correction": False}
    assert cfg.lr_scheduler == "cosine"  # replaced by lr_scheduler_type:
    assert cfg.lr_scheduler_type == "CosineAnnealingLR"
    assert cfg.lr_scheduler_args == {"T_max": 120, "eta_min": 0.2}
    assert cfg.lr_warmup_steps == 0
    assert (cfg.learning_rate, cfg.unet_lr, cfg.text_encoder_lr) == (1.0, 1.0, 1.0)
    assert cfg.max_train_epochs == 120 and cfg.max_train_steps is None  # `epoch` counts epochs
    assert cfg.seed == 31337 and cfg.resolution == (512, 512)
    assert cfg.train_batch_size == 1 and cfg.gradient_accumulation_steps == 1 and cfg.keep_tokens == 1
    assert cfg.network_dropout == 0.3 and cfg.training_comment == "rentry.co/ProdiAgy"
    assert cfg.save_every_n_epochs == 10 and cfg.save_every_n_steps is None  # 0 = off
    ignored = dict(res.ignored)
    assert ignored["noise_offset"] == "noise_offset_type is Multires"
    assert ignored["adaptive_noise_scale"] == "noise_offset_type is Multires"
    assert (cfg.multires_noise_iterations, cfg.multires_noise_discount, cfg.scale_weight_norms) == (8, 0.2, 1.0)
    # additional_parameters' --min/max_bucket_reso 256 / 1024 replace the GUI defaults 256 / 2048
    assert (res.values["min_bucket_reso"], res.values["max_bucket_reso"]) == (256, 1024)
    assert cfg.max_bucket_reso == 1024 and cfg.mixed_precision == "fp16" and cfg.bucket_no_upscale
    assert res.network_args == {"train_on_input": True}


def test_seed_prodigy_lokr(tmp_path):
    p = write(tmp_path, "c.json", PRODIGY_LOKR)
    res = import_kohya_json(p)
    cfg = resolved(res, str(p))
    assert cfg.network_type == "lokr"
    assert (cfg.network_dim, cfg.network_alpha, cfg.conv_dim, cfg.conv_alpha) == (1024, 1024.0, 512, 512.0)
    assert cfg.optimizer_type == "Prodigy"
    assert cfg.optimizer_args == {"betas": (0.9, 0.99), "d0": 1e-6, "d_coef": 1.0, "weight_decay": 0.01,
                                  "safeguard_warmup": False, "use_bias_correction": False}
    assert cfg.lr_scheduler_type == "CosineAnnealingLR"
    assert cfg.lr_scheduler_args == {"T_max": 160, "eta_min": 0.0}
    assert cfg.max_train_epochs == 160 and cfg.seed == 31337 and cfg.keep_tokens == 1
    assert (cfg.learning_rate, cfg.unet_lr, cfg.text_encoder_lr) == (1.0, 1.0, 1.0)
    assert cfg.network_dropout == 0.3
    assert (cfg.multires_noise_iterations, cfg.multires_noise_discount, cfg.scale_weight_norms) == (8, 0.2, 1.0)
    assert (res.values["min_bucket_reso"], res.values["max_bucket_reso"]) == (256, 1024)
    assert cfg.max_bucket_reso == 1024 and cfg.mixed_precision == "fp16"


def test_strict_load_lists_every_pending_setting(tmp_path, monkeypatch):
    # every kohya setting seen so far is implemented, so a pending one is planted next to the seed's
    from lorakit.config import kohya_keys

    monkeypatch.setitem(kohya_keys.TABLE, "future_setting", kohya_keys._neutral("a planted setting", 0))
    monkeypatch.setitem(kohya_keys.TABLE, "other_setting", kohya_keys._neutral("a planted setting", False))
    text = PRODIGY_LOKR.replace('"LoRA_type"', '"other_setting": true,\n  "LoRA_type"', 1)
    text = text.replace('"LoRA_type"', '"future_setting": 3,\n  "LoRA_type"', 1)
    p = write(tmp_path, "c.json", text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "future_setting = 3" in e.value.message and e.value.key is None  # several: no single key
    assert "other_setting = True" in e.value.message  # all of them in one message


def test_additional_parameters_parsing():
    text = ('--lr_scheduler_type "CosineAnnealingLR" --lr_scheduler_args "T_max=120" "eta_min=0.200" '
            '--min_bucket_reso 256 --max_bucket_reso=1024 --gradient_checkpointing')
    assert parse_additional_parameters(text) == [
        ("lr_scheduler_type", ["CosineAnnealingLR"]), ("lr_scheduler_args", ["T_max=120", "eta_min=0.200"]),
        ("min_bucket_reso", ["256"]), ("max_bucket_reso", ["1024"]), ("gradient_checkpointing", [])]


def test_additional_parameters_override_and_unknown_flag(tmp_path):
    p = write(tmp_path, "k.json", '{"optimizer": "AdamW", "additional_parameters": '
              '"--optimizer_type Lion --max_train_steps 300 --lr_scheduler_args \\"T_max=5\\""}')
    cfg = load_config(p)
    assert cfg.optimizer_type == "Lion" and cfg.max_train_steps == 300 and cfg.lr_scheduler_args == {"T_max": 5}
    p = write(tmp_path, "k2.json", '{"additional_parameters": "--lr_schedular_type CosineAnnealingLR"}')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == "additional_parameters" and "did you mean --lr_scheduler_type?" in e.value.format()


@pytest.mark.parametrize("lora_type,extra,network_type,args", [
    ("LyCORIS/LoKr", {"factor": "4", "decompose_both": "true", "use_cp": False}, "lokr",
     {"factor": 4, "decompose_both": True, "use_tucker": False}),
    ("LyCORIS/DyLoRA", {"unit": 4}, "dylora", {"unit": 4}),
    ("Kohya DyLoRA", {"unit": "2"}, "dylora", {"unit": 2}),
    ("LyCORIS/iA3", {"train_on_input": False}, "ia3", {"train_on_input": False}),
    ("LyCORIS/GLoRA", {}, "glora", {}), ("LyCORIS/BOFT", {}, "boft", {}),
    ("LyCORIS/Diag-OFT", {}, "diag-oft", {}), ("LyCORIS/Native Fine-Tuning", {}, "full", {}),
    ("Kohya LoCon", {}, "lora", {}), ("LoCon", {}, "locon", {}),
    ("Kohya LoCon", {"conv_dim": 8, "conv_alpha": 2}, "lora", {}), ("Standard", {"conv_dim": 8}, "lora", {}),
])
def test_lora_types(tmp_path, lora_type, extra, network_type, args):
    import json
    p = write(tmp_path, "k.json", json.dumps({"LoRA_type": lora_type, "network_dim": 16, "network_alpha": 4,
                                              **extra}))
    res = import_kohya_json(p)
    assert res.values["network_type"] == network_type
    assert res.network_args == args
    if lora_type.startswith("LyCORIS/") and lora_type != "LyCORIS/iA3" or lora_type == "LoCon":
        assert (res.values["conv_dim"], res.values["conv_alpha"]) == (16, 4)  # LyCORIS: conv = network
    elif "conv_dim" in extra and lora_type == "Kohya LoCon":
        assert (res.values["conv_dim"], res.values["conv_alpha"]) == (8, 2)
    else:
        assert "conv_dim" not in res.values
        if "conv_dim" in extra:  # Standard adapts no 3x3 convs: the GUI does not pass conv_dim
            assert dict(res.ignored)["conv_dim"] == "LoRA_type 'Standard' adapts no 3x3 convs"
    with pytest.raises(ConfigError) as e:
        import_kohya_json(write(tmp_path, "b.json", '{"LoRA_type": "LyCORIS/LoHA"}'))
    assert "did you mean 'LyCORIS/LoHa'" in e.value.format()


def test_gui_zero_and_warmup_percent(tmp_path):
    p = write(tmp_path, "k.json", '{"seed": "0", "max_train_steps": "0", "epoch": 4, "lr_warmup": "10", '
              '"lr_scheduler": "cosine", "max_grad_norm": 0, "clip_skip": 0, "save_every_n_epochs": 0,}')
    cfg = load_config(p)
    assert cfg.seed is None and cfg.max_train_steps is None and cfg.max_train_epochs == 4
    assert cfg.lr_warmup_steps == 0.1 and cfg.max_grad_norm == 0.0 and cfg.clip_skip == 1
    # 10 % of 78 steps is 7.8: rounded, as the GUI's round(pct * steps / 100)
    assert warmup_steps_for(cfg.lr_warmup_steps, 78) == 8
    assert cfg.save_every_n_epochs is None
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "w.json", '{"lr_warmup": 100, "lr_scheduler": "cosine"}'))
    assert e.value.key == "lr_warmup"
    cfg = load_config(write(tmp_path, "r.json", '{"lr_scheduler": "cosine_with_restarts", "epoch": 6, '
                                                '"lr_scheduler_num_cycles": ""}'))
    assert cfg.lr_scheduler_num_cycles == 6  # GUI: blank -> epoch


def test_noise_type_original_ignores_multires(tmp_path):
    p = write(tmp_path, "k.json", '{"noise_offset_type": "Original", "multires_noise_iterations": 6, '
              '"multires_noise_discount": 0.3, "noise_offset": 0}')
    res = import_kohya_json(p)
    ignored = dict(res.ignored)
    assert ignored["multires_noise_iterations"] == "noise_offset_type is Original"
    assert res.problems.items == []


def test_lycoris_preset_maps_for_lycoris_types_only(tmp_path):
    full = load_config(write(tmp_path, "a.json", '{"LoRA_type": "LyCORIS/LoHa", "LyCORIS_preset": "full"}'))
    assert full.network_preset == "full"
    std = import_kohya_json(write(tmp_path, "b.json", '{"LoRA_type": "Standard", "LyCORIS_preset": "full"}'))
    assert "network_preset" not in std.values and "LyCORIS_preset" in dict(std.ignored)
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "c.json", '{"LoRA_type": "LyCORIS/LoKr", "LyCORIS_preset": "unet-convblock-only"}'))
    assert e.value.key == "LyCORIS_preset"


def test_sdxl_cache_text_encoder_outputs_checkbox(tmp_path):
    on = load_config(write(tmp_path, "a.json", '{"sdxl_cache_text_encoder_outputs": true, "text_encoder_lr": 0}'))
    assert on.cache_text_encoder_outputs is True
    res = import_kohya_json(write(tmp_path, "b.json", '{"sdxl_cache_text_encoder_outputs": false}'))
    # unticked = sd-scripts' default: lorakit decides (on while the TE is frozen; same results)
    assert "cache_text_encoder_outputs" not in res.values and "sdxl_cache_text_encoder_outputs" in dict(res.ignored)
    flag = load_config(write(tmp_path, "c.json", '{"additional_parameters": "--cache_text_encoder_outputs"}'))
    assert flag.cache_text_encoder_outputs is True
    # flags that change how, not what: listed as ignored, not refused; a typo still is an error
    res = import_kohya_json(write(tmp_path, "d.json", '{"additional_parameters": '
                                                      '"--cache_text_encoder_outputs_to_disk --sdpa"}'))
    assert "--sdpa" in dict(res.ignored)
    assert res.values["cache_text_encoder_outputs"] is True  # sd-scripts: to_disk turns the cache on
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "e.json", '{"additional_parameters": "--spda"}'))
    assert "--spda" in e.value.message and e.value.key == "additional_parameters"


def test_step_validation_keys_map(tmp_path):
    cfg = load_config(write(tmp_path, "v.json", '{"validation_split": 0.1, "validate_every_n_steps": "50", '
                                                '"max_validation_steps": 3}'))
    assert (cfg.validate_every_n_steps, cfg.max_validation_steps) == (50, 3)
    off = load_config(write(tmp_path, "o.json", '{"validate_every_n_steps": 0, "max_validation_steps": "0"}'))
    assert (off.validate_every_n_steps, off.max_validation_steps) == (None, None)  # the GUI's 0 = off / all
    cfg = load_config(write(tmp_path, "a.json", '{"validate_every_n_steps": 50, '
                                                '"additional_parameters": "--validate_every_n_steps 20"}'))
    assert cfg.validate_every_n_steps == 20  # the command line wins


def gui(tmp_path, name, **values):
    import json
    return write(tmp_path, name, json.dumps(values))


NET_KEYS = {"network_type", "network_args", "conv_dim", "conv_alpha", "network_dropout", "rank_dropout",
            "module_dropout", "network_preset"}


def test_network_args_in_additional_parameters(tmp_path):
    # Standard = networks.lora: conv_dim / conv_alpha become the schema keys (kohya's LoCon-in-LoRA)
    cfg = load_config(gui(tmp_path, "a.json", LoRA_type="Standard", network_dim=16, network_alpha=8,
                          additional_parameters='--network_args "conv_dim=8" "conv_alpha=4"'))
    assert cfg.model_dump(include=NET_KEYS) == {
        "network_type": "lora", "network_args": {}, "conv_dim": 8, "conv_alpha": 4.0, "network_dropout": None,
        "rank_dropout": None, "module_dropout": None, "network_preset": "kohya"}
    # a LyCORIS type keeps its algorithm and JSON args; the command line overrides per key
    cfg = load_config(gui(tmp_path, "b.json", **{"LoRA_type": "LyCORIS/LoKr", "network_dim": 16, "network_alpha": 8,
                          "factor": 4, "conv_dim": 4, "rank_dropout": 0.1, "additional_parameters":
                          '--network_args "decompose_both=True" "rank_dropout=0.25" "module_dropout=0.1" '
                          '"dropout=0.05" "use_cp=True" "preset=attn-mlp"'}))
    assert cfg.model_dump(include=NET_KEYS) == {
        "network_type": "lokr", "network_args": {"factor": 4, "decompose_both": True, "use_tucker": True},
        "conv_dim": 4, "conv_alpha": 8.0, "network_dropout": 0.05, "rank_dropout": 0.25, "module_dropout": 0.1,
        "network_preset": "attn-mlp"}


def test_network_args_algo_overrides_lora_type(tmp_path):
    # sd-scripts runs network_module + the command line's args: algo=loha wins over LoRA_type LyCORIS/LoKr;
    # LoKr's own arg (factor) is dropped with a note, conv_dim from the command line overrides the JSON's 4
    p = gui(tmp_path, "c.json", **{"LoRA_type": "LyCORIS/LoKr", "network_dim": 16, "network_alpha": 8, "factor": 4,
                                   "conv_dim": 4, "additional_parameters": '--network_args "algo=loha" "conv_dim=8"'})
    cfg = load_config(p)
    assert (cfg.network_type, cfg.network_args, cfg.conv_dim, cfg.conv_alpha) == ("loha", {}, 8, 8.0)
    ignored = dict(import_kohya_json(p).ignored)
    assert ignored["LoRA_type"] == "additional_parameters select network_type 'loha' instead of 'lokr'"
    assert "not of the algorithm" in ignored["factor"]
    # --network_module lycoris.kohya turns a Standard config into LyCORIS iA3
    cfg = load_config(gui(tmp_path, "d.json", LoRA_type="Standard", additional_parameters=(
        '--network_module lycoris.kohya --network_args "algo=ia3" "train_on_input=True"')))
    assert (cfg.network_type, cfg.network_args, cfg.conv_dim) == ("ia3", {"train_on_input": True}, None)
    # networks.lora would ignore algo and train plain LoRA: refused
    with pytest.raises(ConfigError) as e:
        load_config(gui(tmp_path, "e.json", LoRA_type="Standard",
                        additional_parameters='--network_args "conv_dim=8" "algo=loha"'))
    assert e.value.key == "additional_parameters" and "lycoris.kohya" in e.value.fix


@pytest.mark.parametrize("args,guess", [('"use_tuker=True"', "did you mean 'use_tucker'?"),
                                        ('"algo=lohaa"', "did you mean algo=loha?"),
                                        ('"preset=unet-only"', "attn-mlp")])
def test_network_args_unknown_in_additional_parameters(tmp_path, args, guess):
    p = gui(tmp_path, "f.json", LoRA_type="LyCORIS/LoHa", additional_parameters=f"--network_args {args}")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert e.value.key == "additional_parameters" and e.value.file == str(p) and guess in e.value.fix


def test_network_weights_keys_map(tmp_path):
    cfg = load_config(write(tmp_path, "w.json", '{"LoRA_type": "Standard", "lora_network_weights": "old/last.safetensors", '
                            '"dim_from_weights": true}'))
    assert (cfg.network_weights, cfg.dim_from_weights) == ("old/last.safetensors", True)
    res = import_kohya_json(write(tmp_path, "e.json", '{"lora_network_weights": "", "dim_from_weights": false}'))
    assert "network_weights" not in res.values and res.problems.items == []
    cfg = load_config(write(tmp_path, "a.json", '{"additional_parameters": "--network_weights a.safetensors '
                            '--dim_from_weights"}'))
    assert (cfg.network_weights, cfg.dim_from_weights) == ("a.safetensors", True)
