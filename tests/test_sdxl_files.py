"""SDXL adapter files read by other tools: diffusers' kohya loader (which maps the SGM UNet names
itself) and LyCORIS (LoHa / LoKr), on the tiny SDXL, with the same outputs as lorakit's."""
from __future__ import annotations

import pytest
import torch

from adapters_helpers import cfg
from lorakit.adapters.file import read_adapter_file, save_adapter_file
from lorakit.adapters.network import create_network
from lorakit.models.sgm_layout import unet_module_paths
from lorakit.models.tiny_sdxl import CONTEXT, TE2_PROJECTION, build_tiny_sdxl


def _inputs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(2, 4, 8, 8, generator=g), "t": torch.tensor([10, 500]),
            "ids": torch.randint(0, 49407, (2, 77), generator=g), "ctx": torch.randn(2, 77, CONTEXT, generator=g),
            "pooled": torch.randn(2, TE2_PROJECTION, generator=g),
            "time_ids": torch.tensor([[64.0, 80, 0, 8, 64, 64], [48, 48, 2, 0, 64, 64]])}


def _outputs(m, inp):
    with torch.no_grad():
        h1 = m.text_encoder(inp["ids"]).last_hidden_state
        out2 = m.text_encoder_2(inp["ids"])
        unet = m.unet(inp["x"], inp["t"], inp["ctx"],
                      added_cond_kwargs={"text_embeds": inp["pooled"], "time_ids": inp["time_ids"]}).sample
    return {"te1": h1, "te2": out2.last_hidden_state, "pooled": out2.text_embeds, "unet": unet}


def _randomize(net, seed: int = 1, std: float = 0.2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.all_modules():
            for p in m.parameters():   # every factor, so that no zero-initialised one hides the others
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _adapted(tmp_path, **kw):
    m = build_tiny_sdxl(seed=4)
    net = create_network(cfg(**kw), m.unet, m.text_encoders, unet_module_name=m.unet_module_name)
    _randomize(net)
    net.apply()
    path = tmp_path / "a.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {"ss_network_module": net.network_module_name},
                      overwrite=True)
    return m, net, path


def _assert_same(want, before, got):
    for k in want:
        assert (want[k] - before[k]).abs().max().item() > 1e-3, k     # the adapter changes it
        assert (got[k] - want[k]).abs().max().item() <= 1e-5, k


@pytest.mark.parametrize("conv_dim", [None, 3])
def test_diffusers_load_lora_weights_uses_every_key_and_reproduces_outputs(tmp_path, conv_dim):
    pytest.importorskip("peft")
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    inp = _inputs()
    m, net, path = _adapted(tmp_path, network_dim=4, network_alpha=2.0, conv_dim=conv_dim, conv_alpha=1.5)
    want = _outputs(m, inp)
    tensors, _ = read_adapter_file(path)
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.") for k in tensors)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_2_mlp_fc2.") for k in tensors)
    fresh = build_tiny_sdxl(seed=4)
    before = _outputs(fresh, inp)
    pipe = StableDiffusionXLPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder,
                                     text_encoder_2=fresh.text_encoder_2, tokenizer=fresh.tokenizer,
                                     tokenizer_2=fresh.tokenizer_2, unet=fresh.unet, scheduler=EulerDiscreteScheduler())
    pipe.load_lora_weights(str(path))
    lora_layers = lambda mod: sum(1 for _, s in mod.named_modules() if hasattr(s, "lora_A") and s.lora_A)  # noqa: E731
    # every module of the file became a peft LoRA layer: no key was dropped
    assert lora_layers(fresh.unet) == len(net.unet_modules)
    assert lora_layers(fresh.text_encoder) + lora_layers(fresh.text_encoder_2) == len(net.text_encoder_modules)
    _assert_same(want, before, _outputs(fresh, inp))


@pytest.mark.parametrize("algo,kw", [("loha", dict(network_dim=4, network_alpha=2.0, conv_dim=2, conv_alpha=1.0)),
                                     ("lokr", dict(network_dim=4, network_alpha=2.0, conv_dim=2, conv_alpha=1.0))])
def test_lycoris_rebuilds_loha_lokr_files(tmp_path, lycoris_kohya, algo, kw):
    """LyCORIS names a diffusers UNet by its diffusers paths: the file's SGM names are mapped back
    with the tiny model's own table (the names themselves are checked against sd-scripts' layout in
    test_sdxl_names.py); text encoder names are LyCORIS's own (lora_te1_ / lora_te2_)."""
    inp = _inputs()
    m, net, path = _adapted(tmp_path, network_type=algo, **kw)
    want = _outputs(m, inp)
    tensors, meta = read_adapter_file(path)
    assert meta["ss_network_module"] == "lycoris.kohya"
    back = {("lora_unet_" + sgm.replace(".", "_")): "lora_unet_" + d.replace(".", "_")
            for d, sgm in unet_module_paths(m.unet).items()}
    sd = {}
    for k, v in tensors.items():
        name, _, rest = k.partition(".")
        name = back.get(name, name).replace("lora_te1_text_model_", "lora_te1_")   # transformers 5 CLIPTextModel
        sd[f"{name}.{rest}"] = v
    fresh = build_tiny_sdxl(seed=4)
    before = _outputs(fresh, inp)
    encoders = [fresh.text_encoder, fresh.text_encoder_2]
    ly, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, encoders, fresh.unet, weights_sd=sd)
    ly.apply_to(encoders, fresh.unet, apply_text_encoder=True, apply_unet=True)
    assert (len(ly.unet_loras), len(ly.text_encoder_loras)) == (len(net.unet_modules), len(net.text_encoder_modules))
    ly.eval()
    _assert_same(want, before, _outputs(fresh, inp))


@pytest.mark.parametrize("algo", ["locon", "lokr"])
def test_network_weights_reads_sdxl_files_back(tmp_path, algo):
    """network_weights / dim_from_weights on an SDXL file: both encoders' modules are read (lora_te1_,
    lora_te2_), SGM 3x3 convs are told from the rest, and a fresh network reproduces the outputs."""
    from lorakit.adapters.weights import load_into, read_weights_file, resolve_dims

    inp = _inputs()
    kw = dict(network_dim=4, network_alpha=2.0, conv_dim=2, conv_alpha=1.0)
    m, net, path = _adapted(tmp_path, network_type=algo, **kw)
    want = _outputs(m, inp)
    wf = read_weights_file(str(path))
    assert set(wf.modules) == set(net.unet_modules) | set(net.text_encoder_modules)
    got = resolve_dims(cfg(network_type=algo, dim_from_weights=True, network_weights=str(path)), wf)
    assert (got.network_dim, got.network_alpha, got.conv_dim, got.conv_alpha) == (4, 2.0, 2, 1.0)
    fresh = build_tiny_sdxl(seed=4)
    net2 = create_network(cfg(network_type=algo, **kw), fresh.unet, fresh.text_encoders,
                          unet_module_name=fresh.unet_module_name)
    assert load_into(net2, wf) == []
    net2.apply()
    got_out = _outputs(fresh, inp)
    for k in want:
        assert (got_out[k] - want[k]).abs().max().item() <= 1e-6, k
