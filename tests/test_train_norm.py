"""train_norm (LyCORIS): the LayerNorm / GroupNorm layers of the adapted blocks get w_norm / b_norm offsets."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapters_helpers import LYCORIS_PRESET_TOML, cfg, inputs, run_models, tiny_models
from lorakit.adapters.file import read_adapter_file, save_adapter_file
from lorakit.adapters.network import check_network_config, create_network
from lorakit.adapters.norm import NormModule
from lorakit.errors import ConfigError

P = "lora_unet_"


def norms(net):
    return {n: m for n, m in net.unet_modules.items() if isinstance(m, NormModule)}


def randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.all_modules():
            for name, p in m.named_parameters():
                if "lora_up" in name or "norm" in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_the_norms_of_the_adapted_blocks_get_modules():
    net = create_network(cfg(network_type="locon", train_norm=True), *tiny_models())
    ns = norms(net)
    # tiny UNet: 4 transformers (norm, norm1-3 each) and 8 ResNet blocks (norm1, norm2 each); CLIP's
    # attention and MLP blocks hold no norm
    assert len(ns) == 4 * 4 + 8 * 2 and not [m for m in net.text_encoder_modules.values() if isinstance(m, NormModule)]
    m = ns[P + "down_blocks_0_attentions_0_transformer_blocks_0_norm1"]
    assert isinstance(m.org, nn.LayerNorm) and tuple(m.w_norm.shape) == (32,) and tuple(m.b_norm.shape) == (32,)
    assert isinstance(ns[P + "up_blocks_0_resnets_1_norm2"].org, nn.GroupNorm)
    assert {n: m.tensors_to_save().keys() for n, m in ns.items()}[P + "mid_block_attentions_0_norm"] == {"w_norm",
                                                                                                      "b_norm"}
    assert net.network_args["train_norm"] == "True"
    # without it nothing changes
    assert not norms(create_network(cfg(network_type="locon"), *tiny_models()))


@pytest.mark.parametrize("layer", [nn.LayerNorm(6), nn.GroupNorm(2, 6)])
def test_norm_module_is_the_norm_with_offset_weights(layer):
    torch.manual_seed(0)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    m = NormModule("n", layer, multiplier=0.5)
    with torch.no_grad():
        m.w_norm.normal_()
        m.b_norm.normal_()
    x = torch.randn(3, 6, 4, 4) if isinstance(layer, nn.GroupNorm) else torch.randn(3, 5, 6)
    w, b = layer.weight + 0.5 * m.w_norm, layer.bias + 0.5 * m.b_norm
    want = (F.group_norm(x, 2, w, b, layer.eps) if isinstance(layer, nn.GroupNorm)
            else F.layer_norm(x, (6,), w, b, layer.eps))
    m.apply()
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)
    m.restore()
    m.merge()  # W += multiplier * w_norm
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_lycoris_loads_the_norm_file_with_the_same_outputs(tmp_path, lycoris_kohya):
    unet, te = tiny_models()
    net = create_network(cfg(network_type="locon", train_norm=True), unet, te)
    randomize(net)
    net.apply()
    x, t, ids = inputs()
    with torch.no_grad():
        enc, out = run_models(unet, te, x, t, ids)
    path = tmp_path / "norm.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {"ss_network_module": "lycoris.kohya"},
                      overwrite=True)
    tensors, _ = read_adapter_file(path)
    assert tensors[P + "down_blocks_0_resnets_0_norm1.w_norm"].shape == (32,)
    assert P + "down_blocks_0_resnets_0_norm1.alpha" not in tensors
    sd = {k.replace("lora_te_text_model_", "lora_te_"): v for k, v in tensors.items()}
    unet2, te2 = tiny_models()
    with torch.no_grad():
        _, out0 = run_models(unet2, te2, x, t, ids)
    # LyCORIS's own network with train_norm builds the same module names
    preset = tmp_path / "preset.toml"
    preset.write_text(LYCORIS_PRESET_TOML)
    own = lycoris_kohya.create_network(1.0, 4, 1.0, None, te2, unet2, algo="locon", train_norm=True,
                                       preset=str(preset))
    assert {m.lora_name for m in own.unet_loras} == set(net.unet_modules)
    ly, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, te2, unet2, weights_sd=sd)
    ly.apply_to(te2, unet2, apply_text_encoder=True, apply_unet=True)
    assert len(ly.unet_loras) == len(net.unet_modules)
    ly.eval()
    with torch.no_grad():
        out2 = unet2(x, t, enc).sample
    assert (out - out0).abs().max().item() > 1e-2
    assert (out2 - out).abs().max().item() <= 1e-5


def test_train_norm_refusals():
    with pytest.raises(ConfigError) as e:
        check_network_config(cfg(network_type="lora", train_norm=True))
    assert e.value.key == "train_norm" and "locon" in e.value.fix
    with pytest.raises(ConfigError, match="attn-only"):
        check_network_config(cfg(network_type="loha", train_norm=True, network_preset="attn-only"))
    for algo in ("locon", "loha", "lokr", "dylora", "glora", "full", "diag-oft", "boft", "ia3"):
        check_network_config(cfg(network_type=algo, train_norm=True))


def test_max_norm_leaves_the_norm_offsets_alone():
    net = create_network(cfg(network_type="locon", train_norm=True, network_train_unet_only=True), *tiny_models())
    randomize(net)
    before = {n: m.w_norm.detach().clone() for n, m in norms(net).items()}
    scaled, _, _ = net.apply_max_norm(1e-3)
    assert scaled == len(net.unet_modules) - len(before)  # every LoCon module, no norm module
    assert all(torch.equal(norms(net)[n].w_norm, w) for n, w in before.items())


def test_train_two_steps_with_train_norm(tiny_model_dir, tmp_path):
    from lorakit.demo import make_synthetic_dataset
    from lorakit.train.loop import train
    from train_helpers import tiny_run_config

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    c = tiny_run_config(tiny_model_dir, data, tmp_path / "out", {}, network_type="locon", network_dim=4,
                        network_alpha=1, learning_rate=1e-3, max_train_steps=2, seed=1, train_norm=True)
    res = train(c, [], overwrite=True)
    tensors, meta = read_adapter_file(res.output_file)
    w = tensors[P + "mid_block_attentions_0_transformer_blocks_0_norm2.w_norm"]
    assert w.shape == (64,) and 1e-4 < w.abs().max().item() < 3e-3  # two Adam steps of about lr from 0
    assert len([k for k in tensors if k.endswith(".w_norm")]) == 32
    assert json.loads(meta["ss_network_args"])["train_norm"] == "True"
    from lorakit.inspect import inspect_file

    report = inspect_file(res.output_file)
    assert report.algorithms()["norm"] == 32 and not report.unknown_keys
