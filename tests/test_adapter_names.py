"""Adapter targets, names and counts on SD1.5-shaped models (meta device), and the registry."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters_helpers import cfg, sd15_meta
from lorakit.adapters.base import CONV1X1, CONV3X3, LINEAR, AdapterModule, _is_clip_target
from lorakit.adapters.network import create_network, normalise_te_key, te_path
from lorakit.adapters.registry import available, get_algorithm, register
from lorakit.errors import ConfigError


@pytest.fixture(scope="module")
def sd15():
    return sd15_meta()


@pytest.fixture(scope="module")
def lora_net(sd15):
    unet, te = sd15
    return create_network(cfg(network_dim=8, network_alpha=4), unet, te)


@pytest.fixture(scope="module")
def locon_net(sd15):
    unet, te = sd15
    return create_network(cfg(network_dim=8, network_alpha=4, conv_dim=6, conv_alpha=3), unet, te)


def test_sd15_lora_counts_and_names(lora_net):
    assert len(lora_net.unet_modules) == 192
    assert len(lora_net.text_encoder_modules) == 72
    assert len(lora_net) == 264
    names = set(lora_net.unet_modules)
    for n in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
              "lora_unet_down_blocks_0_attentions_0_proj_in",
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_out_0",
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj",
              "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2",
              "lora_unet_mid_block_attentions_0_proj_out",
              "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k"):
        assert n in names
    te = set(lora_net.text_encoder_modules)
    for layer in (0, 11):
        for part in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_out_proj",
                     "mlp_fc1", "mlp_fc2"):
            assert f"lora_te_text_model_encoder_layers_{layer}_{part}" in te
    assert all(n.startswith("lora_te_text_model_encoder_layers_") for n in te)
    # 16 Transformer2DModel x (proj_in, proj_out, 2 x 4 attention linears, 2 feed-forward)
    assert sum(n.endswith("_proj_in") for n in names) == 16
    assert not any("resnets" in n or "samplers" in n for n in names)
    # SD1.5 proj_in/proj_out are 1x1 convs: network_dim, as kohya
    m = lora_net.unet_modules["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert m.kind == CONV1X1 and tuple(m.lora_down.weight.shape) == (8, 320, 1, 1)
    assert tuple(m.lora_up.weight.shape) == (320, 8, 1, 1)
    q = lora_net.unet_modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert q.kind == LINEAR and tuple(q.lora_down.weight.shape) == (8, 320) and q.scale == 0.5
    fc2 = lora_net.text_encoder_modules["lora_te_text_model_encoder_layers_11_mlp_fc2"]
    assert tuple(fc2.lora_down.weight.shape) == (8, 3072) and tuple(fc2.lora_up.weight.shape) == (768, 8)
    assert lora_net.network_module_name == "networks.lora" and lora_net.network_args == {}


def test_sd15_locon_counts_and_dims(locon_net):
    unet = locon_net.unet_modules
    assert len(unet) == 278 and len(locon_net.text_encoder_modules) == 72
    conv = unet["lora_unet_up_blocks_1_resnets_2_conv1"]
    assert conv.kind == CONV3X3 and conv.dim == 6 and conv.scale == 0.5
    assert tuple(conv.lora_down.weight.shape) == (6, 1920, 3, 3)  # 1280 + 640 skip channels in
    assert tuple(conv.lora_up.weight.shape) == (1280, 6, 1, 1)
    down = unet["lora_unet_down_blocks_0_downsamplers_0_conv"]
    assert down.lora_down.stride == (2, 2) and down.lora_down.padding == (1, 1)
    assert "lora_unet_up_blocks_0_upsamplers_0_conv" in unet
    temb = unet["lora_unet_down_blocks_1_resnets_0_time_emb_proj"]
    assert temb.kind == LINEAR and temb.dim == 8 and temb.scale == 0.5
    short = unet["lora_unet_down_blocks_1_resnets_0_conv_shortcut"]
    assert short.kind == CONV1X1 and short.dim == 8
    kinds = [m.kind for m in unet.values()]
    assert kinds.count(CONV3X3) == 22 * 2 + 3 + 3  # conv1/conv2 of 22 ResNets, 3 down-, 3 upsamplers
    assert sum(n.endswith("_conv_shortcut") for n in unet) == 14
    assert sum(n.endswith("_time_emb_proj") for n in unet) == 22
    for never in ("conv_in", "conv_out", "time_embedding"):
        assert not any(n.startswith(f"lora_unet_{never}") for n in unet)
    assert locon_net.network_args == {"conv_dim": "6", "conv_alpha": "3"}


def test_conv_alpha_unset_means_conv_dim_and_network_args(sd15):
    unet, te = sd15
    net = create_network(cfg(conv_dim=8, rank_dropout=0.1, module_dropout=0.25), unet, te)
    assert net.network_args == {"conv_dim": "8", "conv_alpha": "8", "rank_dropout": "0.1",
                                "module_dropout": "0.25"}
    assert net.unet_modules["lora_unet_up_blocks_1_resnets_2_conv1"].scale == 1.0


def test_locon_defaults_conv_to_network_dim(sd15):
    unet, te = sd15
    net = create_network(cfg(network_type="LoCon", network_dim=16, network_alpha=8), unet, te)
    assert len(net.unet_modules) == 278
    conv = net.unet_modules["lora_unet_up_blocks_1_resnets_2_conv1"]
    assert conv.dim == 16 and conv.scale == 0.5
    assert net.network_args == {"conv_dim": "16", "conv_alpha": "8"}


def test_train_only_flags_and_zero_lr(sd15):
    unet, te = sd15
    net = create_network(cfg(network_train_unet_only=True), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (192, 0)
    assert net.train_unet and not net.train_text_encoder
    net = create_network(cfg(network_train_text_encoder_only=True), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (0, 72)
    net = create_network(cfg(unet_lr=0.0), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (0, 72)
    with pytest.raises(ConfigError):
        create_network(cfg(unet_lr=0.0, text_encoder_lr=0.0), unet, te)


def test_te_names_with_transformers4_layout(sd15):
    """A CLIPTextModel that has .text_model (transformers 4) gives the same names."""
    _, te = sd15

    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.text_model = inner

    net = create_network(cfg(network_train_text_encoder_only=True), None, Wrapped(te))
    net5 = create_network(cfg(network_train_text_encoder_only=True), None, te)
    assert list(net.text_encoder_modules) == list(net5.text_encoder_modules)
    assert te_path("encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
    assert te_path("text_model.encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
    assert normalise_te_key("lora_te_encoder_layers_0_mlp_fc1.alpha") == \
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"
    assert normalise_te_key("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha") == \
        "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha"


@pytest.mark.parametrize("names,hit", [({"CLIPAttention"}, True), ({"CLIPSdpaAttention"}, True),
                                       ({"CLIPFlashAttention2"}, True), ({"CLIPMLP"}, True),
                                       ({"CLIPEncoderLayer"}, False), ({"CLIPTextEmbeddings"}, False),
                                       ({"Attention"}, False)])
def test_clip_class_variants(names, hit):
    assert _is_clip_target(names) is hit


def test_registry():
    assert {"lora", "locon"} <= set(available())
    assert get_algorithm("LoRA") is get_algorithm("lora")
    assert issubclass(get_algorithm("locon"), get_algorithm("lora"))
    assert get_algorithm("lora").algo == "lora" and get_algorithm("locon").algo == "locon"
    with pytest.raises(ConfigError) as e:
        get_algorithm("lohaa")
    assert e.value.key == "network_type" and "lora" in str(e.value) and "locon" in str(e.value)
    with pytest.raises(ValueError):
        @register("lora")
        class Other(AdapterModule):
            pass
    assert get_algorithm("lora").__name__ == "LoRAModule"


def test_unknown_network_type_from_create_network(sd15):
    unet, te = sd15
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_type="nope"), unet, te)
    assert e.value.key == "network_type"


def test_meta_modules_stay_on_meta(lora_net):
    m = lora_net.unet_modules["lora_unet_down_blocks_0_attentions_0_proj_in"]
    assert m.lora_down.weight.device.type == "meta"
    assert m.alpha.device.type == "cpu" and float(m.alpha) == 4.0 and m.alpha.dim() == 0
    assert torch.is_floating_point(m.alpha) and m.alpha.dtype == torch.float32
