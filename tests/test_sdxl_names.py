"""kohya's SDXL adapter module names on a full-size SDXL (meta device).

sd-scripts builds SDXL networks on its own UNet class (library/sdxl_original_unet.py), whose
module paths are the original SGM layout, so a name is ``lora_unet_`` + that path with '.' -> '_';
with two text encoders the prefixes are ``lora_te1_`` and ``lora_te2_`` (networks/lora.py).
The expected sets below are written from that layout, not from lorakit's conversion table.
"""
from __future__ import annotations

from adapters_helpers import cfg
from lorakit.adapters.network import create_network, te_prefixes

# SGM attention blocks of SDXL base: (module path, transformer depth)
ATTENTIONS = [("input_blocks.4.1", 2), ("input_blocks.5.1", 2), ("input_blocks.7.1", 10), ("input_blocks.8.1", 10),
              ("middle_block.1", 10)] + [(f"output_blocks.{i}.1", 10) for i in (0, 1, 2)] \
    + [(f"output_blocks.{i}.1", 2) for i in (3, 4, 5)]
BLOCK_LINEARS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                 "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"]
# resnets (in_layers.2, out_layers.3: 3x3; emb_layers.1: linear; skip_connection: 1x1 where channels change)
RESNETS = [f"input_blocks.{i}.0" for i in (1, 2, 4, 5, 7, 8)] + ["middle_block.0", "middle_block.2"] \
    + [f"output_blocks.{i}.0" for i in range(9)]
SKIPS = ["input_blocks.4.0", "input_blocks.7.0"] + [f"output_blocks.{i}.0" for i in range(9)]
SAMPLERS = ["input_blocks.3.0.op", "input_blocks.6.0.op", "output_blocks.2.2.conv", "output_blocks.5.2.conv"]


def _name(prefix: str, path: str) -> str:
    return prefix + path.replace(".", "_")


def expected_unet(conv: bool) -> set[str]:
    paths = [f"{a}.{p}" for a, _ in ATTENTIONS for p in ("proj_in", "proj_out")]
    paths += [f"{a}.transformer_blocks.{t}.{lin}" for a, depth in ATTENTIONS for t in range(depth)
              for lin in BLOCK_LINEARS]
    if conv:
        paths += [f"{r}.{p}" for r in RESNETS for p in ("in_layers.2", "out_layers.3", "emb_layers.1")]
        paths += [f"{s}.skip_connection" for s in SKIPS] + SAMPLERS
    return {_name("lora_unet_", p) for p in paths}


def expected_te(prefix: str, layers: int) -> set[str]:
    return {_name(prefix, f"text_model.encoder.layers.{i}.{p}") for i in range(layers)
            for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1",
                      "mlp.fc2")}


def test_te_prefixes_follow_the_number_of_encoders():
    assert te_prefixes(1) == ("lora_te_",) and te_prefixes(2) == ("lora_te1_", "lora_te2_")


def test_sdxl_lora_names_are_kohyas(full_sdxl):
    m = full_sdxl
    net = create_network(cfg(network_dim=4, network_alpha=1), m.unet, m.text_encoders,
                         unet_module_name=m.unet_module_name)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (722, 72 + 192)   # sd-scripts' counts
    assert set(net.unet_modules) == expected_unet(conv=False)
    assert set(net.text_encoder_modules) == expected_te("lora_te1_", 12) | expected_te("lora_te2_", 32)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in net.unet_modules


def test_sdxl_locon_names_are_kohyas(full_sdxl):
    m = full_sdxl
    net = create_network(cfg(network_dim=4, network_alpha=1, conv_dim=2, conv_alpha=1), m.unet, m.text_encoders,
                         unet_module_name=m.unet_module_name)
    assert set(net.unet_modules) == expected_unet(conv=True)
    assert len(net.unet_modules) == 722 + 17 * 3 + 11 + 4
    conv = net.unet_modules["lora_unet_output_blocks_2_2_conv"]
    assert conv.lora_down.weight.shape[:2] == (2, 1280)   # a 3x3 conv at conv_dim


def test_sd1_names_unchanged_with_one_encoder():
    from adapters_helpers import tiny_models

    unet, te = tiny_models()
    a = create_network(cfg(), unet, te)
    b = create_network(cfg(), unet, [te])
    assert list(a.state_dict()) == list(b.state_dict())
    sd1 = ("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_unet_mid_block_", "lora_te_text_model_")
    assert all(n.startswith(sd1)
               for n in a.unet_modules.keys() | a.text_encoder_modules.keys())

