"""network_preset: which layers get adapters, counted on SD1.5 shapes (meta device)."""
from __future__ import annotations

import pytest

from adapters_helpers import cfg, sd15_meta
from lorakit.adapters.network import create_network


@pytest.fixture(scope="module")
def sd15():
    return sd15_meta()


@pytest.mark.parametrize("preset,algo,unet_n,te_n", [
    ("kohya", "lora", 192, 72),      # 16 transformer blocks x 12 linears; 12 CLIP layers x 6
    ("attn-mlp", "lora", 160, 72),   # 16 x (8 attention + 2 feed-forward)
    ("attn-only", "lora", 128, 48),  # 16 x 8 attention; 12 x 4 CLIP attention
    ("full", "lora", 282, 72),       # 278 (with the conv blocks) + conv_in, conv_out, time_embedding x2
    ("full", "loha", 282, 72),
])
def test_preset_counts(sd15, preset, algo, unet_n, te_n):
    unet, te = sd15
    net = create_network(cfg(network_type=algo, network_preset=preset), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (unet_n, te_n)
    names = set(net.unet_modules)
    if preset == "full":
        assert {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1",
                "lora_unet_time_embedding_linear_2"} <= names
        # 3x3 convs take network_dim when conv_dim is unset (LyCORIS)
        assert net.unet_modules["lora_unet_conv_in"].dim == 4
    else:
        assert "lora_unet_conv_in" not in names
    if preset == "attn-only":
        assert not any("_ff_" in n or "proj_in" in n for n in names)
        assert not any("mlp" in n for n in net.text_encoder_modules)
    if preset == "attn-mlp":
        assert any("_ff_net_2" in n for n in names) and not any("proj_in" in n for n in names)


def test_unknown_preset_is_a_config_error():
    from lorakit.config.load import load_config
    from lorakit.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(None, ["network_preset=attn"])
    assert e.value.key == "network_preset"
