"""SDXL's block-wise ranks and learning rates: sd-scripts' 23-block table (networks/lora.py).

sd-scripts counts 1 (BASE: time/label embedding) + 9 input + 3 middle + 9 output + 1 (OUT: the
output conv) = 23 blocks and finds a module's block from its original-layout name:
``input_blocks_<k>_`` is 1 + k, ``middle_block_<k>_`` 10 + k, ``output_blocks_<k>_`` 13 + k. The
down/up lr weights take 9 values (presets over 9 blocks), mid up to 3, and BASE / OUT keep 1.0.
The expected numbers below are worked from those rules and SDXL base's layout by hand.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from adapters_helpers import cfg
from lorakit.adapters.blockwise import SD_BLOCKS, SDXL_BLOCKS, block_lr_weights, preset_weights, sdxl_block_index
from lorakit.adapters.network import check_network_config, create_network
from lorakit.config.load import load_config
from lorakit.errors import ConfigError

P = "lora_unet_"


@pytest.fixture(scope="module")
def tiny_sdxl():
    from lorakit.models.tiny_sdxl import build_tiny_sdxl

    return build_tiny_sdxl(seed=1)


def sdxl_net(m, **kw):
    return create_network(cfg(**kw), m.unet, m.text_encoders, unet_module_name=m.unet_module_name, family="sdxl")


def test_sdxl_block_table_and_index_rule():
    t = SDXL_BLOCKS
    assert (t.total, t.side, t.mid) == (23, 9, 3) and (SD_BLOCKS.total, SD_BLOCKS.side, SD_BLOCKS.mid) == (25, 12, 1)
    assert (t.names[0], t.names[1], t.names[9], t.names[10], t.names[12], t.names[13], t.names[21], t.names[22]) \
        == ("BASE", "IN00", "IN08", "MID00", "MID02", "OUT00", "OUT08", "OUT")
    cases = {"time_embed_0": 0, "label_emb_0_0": 0, "input_blocks_0_0": 1, "input_blocks_1_0_in_layers_2": 2,
             "input_blocks_3_0_op": 4, "input_blocks_4_1_transformer_blocks_0_attn1_to_q": 5,
             "input_blocks_8_1_proj_out": 9, "middle_block_0_emb_layers_1": 10, "middle_block_1_proj_in": 11,
             "middle_block_2_out_layers_3": 12, "output_blocks_0_1_proj_out": 13, "output_blocks_2_2_conv": 15,
             "output_blocks_5_2_conv": 18, "output_blocks_8_0_skip_connection": 21, "out_2": 22}
    assert {k: sdxl_block_index(P + k) for k in cases} == cases
    for outside in ("lora_te1_text_model_encoder_layers_0_mlp_fc1", P + "down_blocks_1_attentions_0_proj_in"):
        assert sdxl_block_index(outside) is None


def test_every_full_size_sdxl_module_has_its_block(full_sdxl):
    # kohya's default targets: the Transformer2DModels' linears, 10 per transformer block + proj_in/out;
    # depth 2 at input_blocks 4, 5 and output_blocks 3-5, depth 10 at input_blocks 7, 8, middle_block 1
    # and output_blocks 0-2: 22 and 102 modules
    net = sdxl_net(full_sdxl, network_dim=4, network_alpha=1, down_lr_weight="1")
    per_block = Counter(SDXL_BLOCKS.index(n) for n in net.unet_modules)
    assert per_block == {5: 22, 6: 22, 8: 102, 9: 102, 11: 102, 13: 102, 14: 102, 15: 102, 16: 22, 17: 22, 18: 22}
    assert sum(per_block.values()) == 722
    # with conv_dim: each ResNet adds in_layers.2, out_layers.3, emb_layers.1 (+ skip_connection where the
    # channels change: input_blocks 4, 7 and every output block), each down-/upsampler one conv
    net = sdxl_net(full_sdxl, network_dim=4, network_alpha=1, conv_dim=2, conv_alpha=1, down_lr_weight="1")
    per_block = Counter(SDXL_BLOCKS.index(n) for n in net.unet_modules)
    assert per_block == {2: 3, 3: 3, 4: 1, 5: 26, 6: 25, 7: 1, 8: 106, 9: 105, 10: 3, 11: 102, 12: 3,
                         13: 106, 14: 106, 15: 107, 16: 26, 17: 26, 18: 27, 19: 4, 20: 4, 21: 4}
    assert sum(per_block.values()) == 788 and 0 not in per_block and 1 not in per_block and 22 not in per_block


def test_sdxl_block_dims_give_each_module_its_blocks_rank(full_sdxl):
    dims = [0, 0, 1, 1, 1, 2, 3, 4, 0, 5, 6, 7, 6, 8, 8, 9, 4, 4, 3, 1, 1, 1, 0]  # IN07 (block 8): 0
    conv = [0] * 13 + [2] * 9 + [0]                                           # 3x3 only on the output side
    net = sdxl_net(full_sdxl, network_dim=16, network_alpha=1, block_dims=",".join(map(str, dims)),
                   block_alphas=",".join(str(d / 2) for d in dims), conv_block_dims=",".join(map(str, conv)))
    m = net.unet_modules
    expect = {"input_blocks_4_1_proj_in": 2, "input_blocks_5_1_transformer_blocks_1_ff_net_2": 3,
              "input_blocks_8_1_transformer_blocks_9_attn2_to_v": 5, "middle_block_1_proj_out": 7,
              "output_blocks_0_1_transformer_blocks_0_attn1_to_q": 8, "output_blocks_2_1_proj_in": 9,
              "output_blocks_5_1_proj_out": 3, "output_blocks_5_0_emb_layers_1": 3,
              "output_blocks_2_2_conv": 2, "output_blocks_8_0_in_layers_2": 2, "output_blocks_8_0_skip_connection": 1,
              "input_blocks_1_0_emb_layers_1": 1, "middle_block_0_emb_layers_1": 6}
    assert {k: m[P + k].dim for k in expect} == expect
    assert float(m[P + "middle_block_1_proj_out"].alpha) == 3.5 and float(m[P + "input_blocks_4_1_proj_in"].alpha) == 1
    assert not [n for n in m if n.startswith(P + "input_blocks_7_")]           # block 8 has dim 0
    assert not [n for n in m if n.startswith(P + "middle_block_0_") and m[n].kind == "conv3x3"]
    # Linear / 1x1: 722 + 17 emb_layers + 11 skip_connections, less IN07's 102 + 1 + 1; 3x3: OUT00-OUT08's
    # nine ResNets (2 each) and two upsamplers
    assert len(m) == 722 + 17 + 11 - 104 + 9 * 2 + 2
    assert {mod.dim for mod in net.text_encoder_modules.values()} == {16}     # the text encoders have no block


def test_sdxl_counts_are_checked_once_the_family_is_known(full_sdxl, tiny_sdxl):
    sd_list, xl_list = ",".join(["2"] * 25), ",".join(["2"] * 23)
    with pytest.raises(ConfigError) as e:  # an SD1 list on SDXL
        sdxl_net(tiny_sdxl, block_dims=sd_list)
    assert e.value.key == "block_dims" and "has 25 values (a list for SD1.x/2.x)" in e.value.message
    assert "SDXL UNet has 23 blocks: BASE, IN00-IN08, MID00-MID02, OUT00-OUT08, OUT" in e.value.message
    assert "give block_dims 23 values" in e.value.fix
    from adapters_helpers import tiny_models

    with pytest.raises(ConfigError) as e:  # an SDXL list on SD1
        create_network(cfg(block_dims=xl_list, conv_block_dims=xl_list), *tiny_models())
    assert "block_dims has 23 values (a list for SDXL); the SD1.x/2.x UNet has 25 blocks" in e.value.message
    assert "conv_block_dims: conv_block_dims has 23" in e.value.message   # every problem at once
    # before the model loads when the config names the family (sdxl / v2; checked against the weights)
    with pytest.raises(ConfigError, match="UNet has 23 blocks") as e:
        check_network_config(cfg(sdxl=True, block_dims=sd_list))
    check_network_config(cfg(block_dims=sd_list))   # family unknown yet: 25 and 23 both pass
    check_network_config(cfg(block_dims=xl_list))
    with pytest.raises(ConfigError, match="the SD1.x/2.x UNet takes at most 1 there") as e:
        check_network_config(cfg(v2=True, mid_lr_weight="1,0.5"))
    assert e.value.key == "mid_lr_weight"
    with pytest.raises(ConfigError, match="the SDXL UNet takes at most 9 there") as e:
        check_network_config(cfg(block_dims=xl_list, up_lr_weight=",".join(["1"] * 10)), family="sdxl")
    assert e.value.key == "up_lr_weight" and "at most 9 values" in e.value.fix
    with pytest.raises(ConfigError, match="different lengths .block_dims 23, block_alphas 25"):
        load_config(None, [], {"block_dims": xl_list, "block_alphas": sd_list})
    with pytest.raises(ConfigError) as e:
        load_config(None, [], {"block_dims": "1,2,3"})
    assert e.value.key == "block_dims" and "25 for SD1.x/2.x" in e.value.message and "23 for SDXL" in e.value.message


def test_sdxl_lr_weights_follow_sd_scripts():
    # presets over 9 blocks: sin(pi/2 * i/8); BASE and OUT stay 1.0
    w = block_lr_weights(cfg(down_lr_weight="sine"), SDXL_BLOCKS)
    assert len(w) == 23 and w[0] == 1.0 and w[22] == 1.0 and w[10:22] == [1.0] * 12
    assert w[1] == 0.0 and w[2] == pytest.approx(math.sin(math.pi / 16), abs=1e-15) and w[9] == 1.0
    assert w[5] == pytest.approx(math.sqrt(0.5), abs=1e-15)   # IN04: sin(pi/4)
    assert preset_weights("linear", 9)[3] == 3 / 8 and preset_weights("reverse_linear+0.5", 9)[8] == 0.5
    # mid takes up to 3 (missing ones 1); a given value not above the threshold becomes 0
    w = block_lr_weights(cfg(mid_lr_weight="0.5,0.1", up_lr_weight="1,,0.3", block_lr_zero_threshold=0.2),
                         SDXL_BLOCKS)
    assert w[10:13] == [0.5, 0.0, 1.0] and w[13:16] == [1.0, 0.0, 0.3] and w[16:23] == [1.0] * 7
    assert w[:10] == [1.0] * 10
    # SD1 with the same settings keeps its 25 (mid: one value)
    assert len(block_lr_weights(cfg(down_lr_weight="sine"))) == 25


def test_sdxl_block_lr_groups_and_zero_weight_blocks(tiny_sdxl):
    # tiny SDXL transformers: input_blocks 4, 5 (blocks 5, 6), middle_block 1 (11), output_blocks 0-2 (13-15)
    net = sdxl_net(tiny_sdxl, down_lr_weight="sine", mid_lr_weight="0.25,0.5", up_lr_weight="1,0,0.5")
    groups = {g["name"]: g["lr"] for g in net.param_groups(text_encoder_lr=5e-5, unet_lr=1e-4)}
    assert groups == pytest.approx({"textencoder": 5e-5, "unet_block5": 1e-4 * math.sin(math.pi / 4),
                                    "unet_block6": 1e-4 * math.sin(5 * math.pi / 16), "unet_block11": 5e-5,
                                    "unet_block13": 1e-4, "unet_block15": 5e-5}, rel=1e-12)
    # OUT01 (output_blocks_1, block 14) has weight 0: no modules at all (sd-scripts sets its dims to 0)
    assert not [n for n in net.unet_modules if n.startswith(P + "output_blocks_1_")]
    assert {SDXL_BLOCKS.index(n) for n in net.unet_modules} == {5, 6, 11, 13, 15}
    # the zero threshold: weights not above it remove their blocks too
    net = sdxl_net(tiny_sdxl, down_lr_weight="linear", block_lr_zero_threshold=0.5)
    assert {SDXL_BLOCKS.index(n) for n in net.unet_modules} == {6, 11, 13, 14, 15}   # IN04 = 4/8 is dropped


def test_train_tiny_sdxl_with_block_dims_and_lr_weights(tiny_sdxl_dir, tmp_path):
    from lorakit.adapters.file import read_adapter_file
    from lorakit.demo import make_synthetic_dataset
    from lorakit.monitors import MetricsJsonl
    from lorakit.train.loop import train
    from train_helpers import tiny_run_config

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    dims = ["2"] * 23
    dims[6], dims[11] = "0", "3"  # IN05 (input_blocks_5) none, MID01 (middle_block_1) rank 3
    c = tiny_run_config(tiny_sdxl_dir, data, tmp_path / "out", {}, network_dim=4, network_alpha=1,
                        learning_rate=1e-3, max_train_steps=2, seed=1, block_dims=",".join(dims), conv_dim=2,
                        down_lr_weight="linear", mid_lr_weight=0.5, up_lr_weight="1,1,1,0",
                        network_train_unet_only=True)
    res = train(c, [MetricsJsonl(str(tmp_path / "out" / "metrics.jsonl"))], overwrite=True)
    tensors, meta = read_adapter_file(res.output_file)
    modules = {k.split(".")[0] for k in tensors}
    # block_dims 0 removes IN05's Linear / 1x1 adapters; its 3x3 convs keep conv_dim (sd-scripts: conv_dim
    # fills conv_block_dims); up_lr_weight 0 removes every adapter of OUT03 (output_blocks_3)
    assert sorted(n[len(P):] for n in modules if n.startswith(P + "input_blocks_5_")) \
        == ["input_blocks_5_0_in_layers_2", "input_blocks_5_0_out_layers_3"]
    assert not [n for n in modules if n.startswith(P + "output_blocks_3_")]
    assert P + "output_blocks_4_0_in_layers_2" in modules
    assert tensors[P + "input_blocks_4_1_proj_in.lora_down.weight"].shape[0] == 2
    assert tensors[P + "middle_block_1_proj_in.lora_down.weight"].shape[0] == 3
    assert tensors[P + "middle_block_0_in_layers_2.lora_down.weight"].shape[:2] == (2, 64)  # conv_dim
    assert json.loads(meta["ss_network_args"])["block_dims"] == ",".join(dims)
    rows = [json.loads(x) for x in open(tmp_path / "out" / "metrics.jsonl")]
    step = [r for r in rows if "loss" in r][0]
    lrs = {k[len("lr/"):]: v for k, v in step.items() if k.startswith("lr/")}
    # linear over 9: IN01 1/8 (input_blocks_1), IN03 3/8 (the downsampler), IN04 4/8;
    # IN05 keeps its 3x3 convs at 5/8; mid 0.5 is MID00, MID01/MID02 are filled with 1; up: OUT03 is 0
    assert lrs == pytest.approx({"unet_block2": 1e-3 / 8, "unet_block3": 2e-3 / 8, "unet_block4": 3e-3 / 8,
                                 "unet_block5": 4e-3 / 8, "unet_block6": 5e-3 / 8, "unet_block10": 5e-4,
                                 "unet_block11": 1e-3, "unet_block12": 1e-3,
                                 **{f"unet_block{b}": 1e-3 for b in (13, 14, 15, 17, 18)}}, rel=1e-9)


def test_an_sd1_list_on_sdxl_stops_after_the_load_before_training(tiny_sdxl_dir, tmp_path):
    from lorakit.demo import make_synthetic_dataset
    from lorakit.train.loop import train
    from train_helpers import tiny_run_config

    data = make_synthetic_dataset(tmp_path / "data", n_images=1, repeats=1)
    c = tiny_run_config(tiny_sdxl_dir, data, tmp_path / "out", {}, network_dim=4, max_train_steps=1,
                        block_dims=",".join(["2"] * 25), up_lr_weight=",".join(["1"] * 10))
    steps = []
    with pytest.raises(ConfigError) as e:
        train(c, [lambda ev: steps.append(ev) if ev.kind == "step" else None], overwrite=True)
    assert e.value.key == "block_dims" and "2 network settings conflict" in e.value.message
    assert "the SDXL UNet has 23 blocks" in e.value.message and "up_lr_weight has 10 values" in e.value.message
    assert not steps and not list((tmp_path / "out").glob("*.safetensors"))
