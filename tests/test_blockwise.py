"""Block-wise dims, alphas and learning rates (sd-scripts networks/lora.py semantics, SD1/SD2 UNet)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from adapters_helpers import cfg, diffusers_reload, inputs, randomize_up, run_models, sd15_meta, tiny_models
from lorakit.adapters.blockwise import SD_BLOCKS, block_lr_weights, preset_weights, sd_block_index
from lorakit.adapters.file import read_adapter_file, save_adapter_file
from lorakit.adapters.network import check_network_config, create_network
from lorakit.config.load import load_config
from lorakit.errors import ConfigError

DIMS = "2,2,2,2,4,4,4,4,6,6,6,6,8,6,6,6,6,4,4,4,4,2,2,2,2"  # the GUI's own example (IN00..OUT11)
P = "lora_unet_"


def test_block_index_counts_as_sd_scripts():
    names = SD_BLOCKS.names
    assert len(names) == 25 and names[12] == "MID" and names[13] == "OUT00"
    cases = {"down_blocks_0_attentions_0_proj_in": 1, "down_blocks_0_resnets_1_conv1": 2,
             "down_blocks_0_downsamplers_0_conv": 3, "down_blocks_1_attentions_0_proj_out": 4,
             "down_blocks_3_resnets_1_time_emb_proj": 11, "mid_block_attentions_0_proj_in": 12,
             "up_blocks_0_resnets_0_conv1": 13, "up_blocks_0_upsamplers_0_conv": 15,
             "up_blocks_1_attentions_2_transformer_blocks_0_attn1_to_q": 18, "up_blocks_1_upsamplers_0_conv": 18,
             "up_blocks_3_attentions_2_proj_out": 24}
    assert {k: sd_block_index(P + k) for k in cases} == cases
    assert sd_block_index(P + "conv_in") is None
    assert sd_block_index("lora_te_text_model_encoder_layers_0_mlp_fc1") is None


def test_block_dims_give_each_sd15_module_its_blocks_rank():
    unet, te = sd15_meta()
    # block b of DIMS: IN01-03 2, IN04-07 4, IN08-11 6, MID 8, OUT00-03 6, OUT04-07 4, OUT08-11 2;
    # down_blocks_i_attentions_j is IN(1 + 3i + j), up_blocks_i_attentions_j is OUT(3i + j)
    net = create_network(cfg(network_dim=4, network_alpha=2, block_dims=DIMS, block_alphas=DIMS.replace("8", "1")),
                         unet, te)
    m = net.unet_modules
    assert len(m) == 192 and len(net.text_encoder_modules) == 72  # kohya's targets, none at dim 0
    expect = {"down_blocks_0_attentions_0_proj_in": 2, "down_blocks_1_attentions_1_transformer_blocks_0_attn2_to_k": 4,
              "down_blocks_2_attentions_0_proj_out": 4, "down_blocks_2_attentions_1_proj_out": 6,
              "mid_block_attentions_0_transformer_blocks_0_ff_net_2": 8,
              "up_blocks_1_attentions_0_proj_in": 6, "up_blocks_2_attentions_2_proj_in": 2,
              "up_blocks_3_attentions_2_transformer_blocks_0_attn1_to_out_0": 2}
    assert {k: m[P + k].dim for k in expect} == expect
    assert tuple(m[P + "down_blocks_0_attentions_0_proj_in"].lora_down.weight.shape) == (2, 320, 1, 1)
    assert float(m[P + "mid_block_attentions_0_proj_in"].alpha) == 1.0  # block_alphas[12]
    assert float(m[P + "up_blocks_1_attentions_0_proj_in"].alpha) == 6.0
    assert {mod.dim for mod in net.text_encoder_modules.values()} == {4}  # the text encoder has no block
    # dim 0 in IN01 and IN02: down_blocks_0's two transformers (12 modules each) get none
    zero = "2,0,0" + DIMS[5:]
    net0 = create_network(cfg(block_dims=zero), unet, te)
    assert len(net0.unet_modules) == 168
    assert not [n for n in net0.unet_modules if n.startswith(P + "down_blocks_0_")]
    assert net0.network_args["block_dims"] == zero


def test_conv_block_dims_add_the_conv_blocks_with_their_own_ranks():
    unet, te = tiny_models()
    conv = ",".join(["0"] * 13 + ["3"] * 12)  # only the up side (OUT00-OUT11) gets 3x3 adapters
    net = create_network(cfg(network_dim=4, network_alpha=2, block_dims=",".join(["4"] * 25), conv_block_dims=conv,
                             conv_block_alphas=",".join(["1.5"] * 25)), unet, te)
    kinds = {n: (m.kind, m.dim, float(m.alpha)) for n, m in net.unet_modules.items()}
    convs = sorted(n[len(P):] for n, k in kinds.items() if k[0] == "conv3x3")
    assert convs == ["up_blocks_0_resnets_0_conv1", "up_blocks_0_resnets_0_conv2", "up_blocks_0_resnets_1_conv1",
                     "up_blocks_0_resnets_1_conv2", "up_blocks_0_upsamplers_0_conv", "up_blocks_1_resnets_0_conv1",
                     "up_blocks_1_resnets_0_conv2", "up_blocks_1_resnets_1_conv1", "up_blocks_1_resnets_1_conv2"]
    assert {kinds[P + c][1:] for c in convs} == {(3, 1.5)}
    # the ResNet blocks' time_emb_proj (Linear) and conv_shortcut (1x1) take block_dims, as in sd-scripts
    assert kinds[P + "down_blocks_0_resnets_0_time_emb_proj"] == ("linear", 4, 2.0)
    assert kinds[P + "up_blocks_0_resnets_0_conv_shortcut"] == ("conv1x1", 4, 2.0)
    # without conv_block_dims, conv_dim fills every block; conv_alpha unset = each block's conv dim
    net2 = create_network(cfg(block_dims=",".join(["4"] * 25), conv_dim=5), unet, te)
    c = net2.unet_modules[P + "down_blocks_0_downsamplers_0_conv"]
    assert (c.dim, float(c.alpha)) == (5, 5.0)


def test_block_file_has_the_block_shapes_and_reloads_in_diffusers(tmp_path):
    unet, te = tiny_models()
    dims = [0] * 25
    dims[1], dims[12], dims[16], dims[17] = 2, 3, 5, 1  # IN01, MID, OUT03, OUT04: the tiny UNet's transformers
    net = create_network(cfg(network_dim=4, network_alpha=4, block_dims=",".join(map(str, dims))), unet, te)
    randomize_up(net)
    net.apply()
    x, t, ids = inputs()
    with torch.no_grad():
        enc, out = run_models(unet, te, x, t, ids)
    path = tmp_path / "blocks.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {"ss_network_module": "networks.lora"},
                      overwrite=True)
    tensors, _ = read_adapter_file(path)
    ranks = {k[len(P):].split(".")[0]: v.shape[0] for k, v in tensors.items()
             if k.startswith(P) and k.endswith("lora_down.weight")}
    assert ranks["down_blocks_0_attentions_0_proj_in"] == 2
    assert ranks["mid_block_attentions_0_transformer_blocks_0_attn1_to_q"] == 3
    assert ranks["up_blocks_1_attentions_0_proj_out"] == 5
    assert ranks["up_blocks_1_attentions_1_transformer_blocks_0_ff_net_2"] == 1
    assert len(ranks) == 4 * 12  # four transformers, 12 modules each
    assert float(tensors[P + "up_blocks_1_attentions_0_proj_out.alpha"]) == 4.0
    enc0, out0, enc2, out2 = diffusers_reload(path, x, t, ids, enc)
    assert (out - out0).abs().max().item() > 1e-2
    assert (out2 - out).abs().max().item() <= 1e-5 and (enc2 - enc).abs().max().item() <= 1e-5


def test_lr_weight_presets_are_sd_scripts_formulas():
    sine = preset_weights("sine")
    assert sine[0] == 0.0 and sine[11] == 1.0 and sine[1] == pytest.approx(math.sin(math.pi / 22), abs=1e-15)
    assert preset_weights("cosine") == sine[::-1]
    assert preset_weights("linear")[3] == pytest.approx(3 / 11) and preset_weights("reverse_linear")[0] == 1.0
    assert preset_weights("zeros+0.25") == [0.25] * 12
    assert preset_weights("sine+0.5")[0] == 0.5 and preset_weights("sine+0.5")[11] == 1.5
    # a short list is filled with 1.0; an empty entry is 0; values not above the threshold become 0
    w = block_lr_weights(cfg(down_lr_weight="0.5,,0.2", mid_lr_weight="0.1", block_lr_zero_threshold=0.15))
    assert w[:4] == [0.5, 0.0, 0.2, 1.0] and w[12] == 0.0 and w[13:] == [1.0] * 12
    assert block_lr_weights(cfg(up_lr_weight="linear"))[:13] == [1.0] * 13  # an unset side keeps 1.0
    assert block_lr_weights(cfg()) is None


def test_sine_down_weights_give_these_per_block_lrs_and_drop_zero_blocks():
    unet, te = tiny_models()
    net = create_network(cfg(down_lr_weight="sine", up_lr_weight="1,1,1,0,0.5"), unet, te)
    groups = {g["name"]: g for g in net.param_groups(text_encoder_lr=5e-5, unet_lr=1e-4)}
    # tiny UNet transformers: IN01 (down_blocks_0), OUT03 / OUT04 (up_blocks_1 attentions 0 / 1), MID
    assert list(groups) == ["textencoder", "unet_block1", "unet_block17", "unet_block12"]
    assert groups["textencoder"]["lr"] == 5e-5
    assert groups["unet_block1"]["lr"] == pytest.approx(1e-4 * math.sin(math.pi / 22), rel=1e-12)
    assert groups["unet_block17"]["lr"] == pytest.approx(5e-5, rel=1e-12)  # up_lr_weight[4] = 0.5
    assert groups["unet_block12"]["lr"] == 1e-4  # mid unset: 1.0
    # OUT03 has weight 0: its transformer gets no modules at all (sd-scripts sets its dims to 0)
    assert not [n for n in net.unet_modules if "up_blocks_1_attentions_0_" in n]
    assert len(net.unet_modules) == 3 * 12
    assert sum(len(g["params"]) for g in groups.values()) == 2 * len(net.all_modules())


def test_gui_strings_and_bad_values():
    c = load_config(None, [], {"block_dims": DIMS, "block_alphas": "", "conv_block_dims": "", "conv_block_alphas": "",
                               "down_lr_weight": "cosine+0.1", "mid_lr_weight": "0.5", "up_lr_weight": "",
                               "block_lr_zero_threshold": ""})
    assert c.block_dims[12] == 8 and c.block_alphas is None and c.down_lr_weight == "cosine+0.1"
    assert c.mid_lr_weight == [0.5] and c.up_lr_weight is None and c.block_lr_zero_threshold == 0.0
    for bad, key in (({"block_dims": "1,2"}, "block_dims"), ({"down_lr_weight": "sin"}, "down_lr_weight"),
                     ({"up_lr_weight": ",".join(["1"] * 13)}, "up_lr_weight"),
                     ({"block_dims": ",".join(["-1"] * 25)}, "block_dims")):
        with pytest.raises(ConfigError) as e:
            load_config(None, [], bad)
        assert e.value.key == key
    # settings sd-scripts would ignore without a word are refused, with the fix
    with pytest.raises(ConfigError, match="block_alphas is set but block_dims"):
        load_config(None, [], {"block_alphas": DIMS})
    with pytest.raises(ConfigError, match="conv_block_alphas is set but conv_block_dims"):
        load_config(None, [], {"block_dims": DIMS, "conv_block_alphas": DIMS})


def test_block_settings_need_kohya_lora():
    with pytest.raises(ConfigError) as e:
        check_network_config(cfg(network_type="loha", block_dims=DIMS))
    assert e.value.key == "block_dims" and "network_type lora" in e.value.fix
    with pytest.raises(ConfigError) as e:  # every conflict in one message
        check_network_config(cfg(network_type="lokr", down_lr_weight="sine", loraplus_lr_ratio=16, train_norm=True,
                                 network_preset="full"))
    assert "3 network settings conflict" in e.value.message
    for key in ("down_lr_weight", "loraplus_lr_ratio", "network_preset full"):
        assert key in e.value.message


def test_train_two_steps_with_block_settings(tiny_model_dir, tmp_path):
    from lorakit.demo import make_synthetic_dataset
    from lorakit.monitors import MetricsJsonl
    from lorakit.train.loop import train
    from train_helpers import tiny_run_config

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    dims = ",".join(["0"] + ["2"] * 11 + ["3"] + ["2"] * 12)
    c = tiny_run_config(tiny_model_dir, data, tmp_path / "out", {}, network_dim=4, network_alpha=1,
                        learning_rate=1e-3, max_train_steps=2, seed=1, block_dims=dims, conv_dim=2,
                        down_lr_weight="linear", mid_lr_weight=0.5)
    res = train(c, [MetricsJsonl(str(tmp_path / "out" / "metrics.jsonl"))], overwrite=True)
    tensors, meta = read_adapter_file(res.output_file)
    assert tensors[P + "mid_block_attentions_0_proj_in.lora_down.weight"].shape[0] == 3
    assert tensors[P + "down_blocks_0_attentions_0_proj_in.lora_down.weight"].shape[0] == 2
    assert tensors[P + "down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[:2] == (2, 32)
    args = json.loads(meta["ss_network_args"])
    assert args["block_dims"] == dims and args["down_lr_weight"] == "linear" and args["mid_lr_weight"] == "0.5"
    rows = [json.loads(x) for x in open(tmp_path / "out" / "metrics.jsonl")]
    step = [r for r in rows if "loss" in r][0]
    assert step["lr/unet_block1"] == pytest.approx(1e-3 / 11) and step["lr/unet_block12"] == pytest.approx(5e-4)
    assert step["lr/unet_block3"] == pytest.approx(1e-3 * 3 / 11)  # IN03: the downsampler conv


def test_network_args_spelling_points_to_the_config_key():
    """sd-scripts passes these as --network_args; in lorakit they are keys of their own."""
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_args={"block_dims": DIMS}), *tiny_models())
    assert "config key of its own" in e.value.message and "set block_dims" in e.value.fix
