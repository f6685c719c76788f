"""iA3, DyLoRA, full (native fine-tuning) and LoCon Tucker: formulas, targets, files, oracles."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapters_helpers import cfg, diffusers_reload, inputs, run_models, sd15_meta, tiny_models
from lorakit.adapters.dylora import DyLoRAModule
from lorakit.adapters.file import read_adapter_file, save_adapter_file
from lorakit.adapters.full import FullModule
from lorakit.adapters.ia3 import IA3Module
from lorakit.adapters.lora import LoConModule
from lorakit.adapters.network import create_network
from lorakit.errors import ConfigError

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")



def fill(net, std=0.1, seed=1):
    """Random values in every trainable tensor (fresh adapters are zero deltas)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


# --- iA3 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_module_is_w_times_one_plus_w(on_input):
    torch.manual_seed(0)
    org = nn.Linear(12, 10)
    x = torch.randn(3, 5, 12)
    name = "lora_te_text_model_encoder_layers_0_mlp_fc2"  # train_on_input acts on fc2
    m = IA3Module(name, org, args={"train_on_input": on_input}).apply()
    assert m.on_input is on_input and tuple(m.weight.shape) == ((12,) if on_input else (10,))
    assert torch.count_nonzero(m.weight) == 0
    with torch.no_grad():
        base = m._org_forward(x)
        assert torch.equal(org(x), base)  # init 0: no change
        m.weight.normal_(0, 0.5)
        m.multiplier = 0.6
        W, w = org.weight, m.weight
        scaled = W * (1 + 0.6 * w) if on_input else W * (1 + 0.6 * w)[:, None]
        expected = F.linear(x, scaled, org.bias)  # the bias is not scaled
        y = org(x)
        assert max_diff(y, expected) <= 1e-5 and max_diff(y, base) > 1e-2
        assert max_diff(m.delta_weight(), W * w if on_input else W * w[:, None]) <= 1e-6
        m.restore()
        m.merge(0.6)
        assert max_diff(org(x), expected) <= 1e-5
    t = m.tensors_to_save()
    assert set(t) == {"weight", "on_input"} and t["on_input"].dtype == torch.bool and t["on_input"].dim() == 0
    assert bool(t["on_input"]) is on_input


@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_matches_lycoris_module(on_input):
    lyc = pytest.importorskip("lycoris.modules.ia3")
    torch.manual_seed(0)
    org = nn.Linear(16, 8)
    x = torch.randn(2, 16)
    with torch.no_grad():
        base = org(x)
    m = IA3Module("lora_unet_x_ff_net_2", org, args={"train_on_input": on_input}).apply()
    with torch.no_grad():
        m.weight.normal_(0, 0.5)
        ours = org(x)
    m.restore()
    ref = lyc.IA3Module("lora_unet_x_ff_net_2", org, 1.0, train_on_input=on_input)
    # LyCORIS's reload is broken (make_module_from_state_dict): load its state dict strictly
    ref.load_state_dict({"weight": m.weight.detach().clone(), "on_input": torch.tensor(int(on_input))}, strict=True)
    ref.apply_to()
    with torch.no_grad():
        theirs = org(x)
    assert max_diff(ours, theirs) <= 1e-5 and max_diff(ours, base) > 1e-2


def test_ia3_network_targets_files_and_reload(tmp_path):
    unet, te = tiny_models()
    c = cfg(network_type="ia3", network_args={"train_on_input": "True"})
    net = create_network(c, unet, te)
    # 4 Transformer2DModel x (attn1/attn2 to_k, to_v, ff.net.2); 2 CLIP layers x (k_proj, v_proj, fc2)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (20, 6)
    assert all(n.endswith(("_to_k", "_to_v", "_ff_net_2")) for n in net.unet_modules)
    assert all(n.endswith(("_k_proj", "_v_proj", "_mlp_fc2")) for n in net.text_encoder_modules)
    ff = net.unet_modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2"]
    k = net.unet_modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"]
    assert ff.on_input and tuple(ff.weight.shape) == (128,)  # 4 x 32 channels in
    assert not k.on_input and tuple(k.weight.shape) == (32,)
    assert net.network_module_name == "lycoris.kohya"
    assert net.network_args == {"algo": "ia3", "train_on_input": "True"}
    fill(net, std=0.3)
    net.apply()
    x, t, ids = inputs()
    with torch.no_grad():
        enc, out = run_models(unet, te, x, t, ids)
    path = tmp_path / "ia3.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {}, overwrite=False)
    tensors, _ = read_adapter_file(path)
    assert len(tensors) == 2 * 26 and not any(k.endswith(".alpha") for k in tensors)
    unet2, te2 = tiny_models()
    with torch.no_grad():
        enc0, out0 = run_models(unet2, te2, x, t, ids)
    net2 = create_network(c, unet2, te2)
    assert net2.load_weights(str(path)) == {"missing": [], "unexpected": []}
    net2.apply()
    with torch.no_grad():
        enc2, out2 = run_models(unet2, te2, x, t, ids)
        assert max_diff(enc2, enc) <= 1e-5 and max_diff(out2, out) <= 1e-5
        assert max_diff(enc, enc0) > 1e-2 and max_diff(out, out0) > 1e-2
        net2.restore()
        net2.merge(1.0)  # W * (1 + w) baked in
        enc3, out3 = run_models(unet2, te2, x, t, ids)
        assert max_diff(enc3, enc) <= 1e-4 and max_diff(out3, out) <= 1e-4
    # a file trained on the output side does not load into input-side modules
    net3 = create_network(cfg(network_type="ia3"), *tiny_models())
    with pytest.raises(ConfigError) as e:
        net3.load_weights(tensors)
    assert e.value.key == "network_args"
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_type="ia3", network_args={"train_on_inputs": True}), *tiny_models())
    assert "train_on_input" in str(e.value.fix)


def test_ia3_dropout_on_scale_vector_and_max_norm():
    torch.manual_seed(0)
    org = nn.Linear(8, 64)
    x = torch.randn(4, 8)
    m = IA3Module("lora_unet_a_to_k", org, dropout=0.5).apply()
    with torch.no_grad():
        m.weight.normal_(0, 1.0)
        base = m._org_forward(x)
        torch.manual_seed(7)
        wd = F.dropout(m.weight, p=0.5)
        expected = base + (base - org.bias) * wd
        torch.manual_seed(7)
        y = org(x)
        assert max_diff(y, expected) <= 1e-5
        assert 10 <= int((wd == 0).sum()) <= 54  # about half the channels dropped
        org.eval()
        assert max_diff(org(x), base + (base - org.bias) * m.weight) <= 1e-5
    unet, te = tiny_models()
    net = create_network(cfg(network_type="ia3"), unet, te)
    fill(net, std=0.5)
    before = {mm.name: mm.delta_weight().norm().item() for mm in net.all_modules()}
    ranked = sorted(before.values())
    # about half the keys over it, none within rounding of it
    limit = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2
    scaled, avg, mx = net.apply_max_norm(limit)
    assert scaled == sum(v > limit for v in before.values()) > 0
    for mm in net.all_modules():
        n = mm.delta_weight().norm().item()
        assert abs(n - min(before[mm.name], limit)) <= 1e-4 * max(1.0, n)
    assert abs(mx - limit) <= 1e-4


def test_ia3_sd15_file_size_from_shapes():
    import safetensors.torch as st

    unet, te = sd15_meta()
    net = create_network(cfg(network_type="ia3", network_args={"train_on_input": True}), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (80, 36)
    shapes = {f"{m.name}.{k}": (tuple(v.shape), v.dtype) for m in net.all_modules()
              for k, v in m.tensors_to_save().items()}
    tensors = {k: torch.zeros(s, dtype=torch.float16 if d.is_floating_point else d) for k, (s, d) in shapes.items()}
    n_params = sum(t.numel() for k, t in tensors.items() if k.endswith(".weight"))
    # UNet: 8 x channels per transformer (to_k, to_v of 2 attentions + ff.net.2's 4C inputs), sum C = 12480
    # text encoder: 12 x (768 + 768 + 3072)
    assert n_params == 8 * 12480 + 12 * 4608 == 155136
    size = len(st.save(tensors, {"ss_network_module": "lycoris.kohya"}))
    assert 150_000 <= size <= 400_000


# --- DyLoRA --------------------------------------------------------------------------------------
def test_dylora_ranks_are_multiples_of_unit_and_seeded():
    torch.manual_seed(0)
    org = nn.Linear(10, 6)
    x = torch.randn(3, 10)
    m = DyLoRAModule("d", org, 8, 4.0, args={"unit": 2}).apply()
    with torch.no_grad():
        m.lora_up.weight.normal_(0, 0.5)

    def ranks(seed):
        torch.manual_seed(seed)
        out = []
        for _ in range(40):
            org(x)
            out.append(m.last_rank)
        return out

    r1 = ranks(3)
    assert r1 == ranks(3) and r1 != ranks(4)
    assert set(r1) == {2, 4, 6, 8}  # every multiple of unit up to dim occurs in 40 draws
    # the truncated output, scale alpha/dim at any rank, equals the formula
    with torch.no_grad():
        torch.manual_seed(5)
        r = 2 * int(torch.randint(1, 5, (1,)).item())
        D, U = m.lora_down.weight[:r], m.lora_up.weight[:, :r]
        expected = m._org_forward(x) + x @ D.T @ U.T * 0.5
        torch.manual_seed(5)
        y = org(x)
        assert m.last_rank == r and max_diff(y, expected) <= 1e-6
    # only the newest block learns
    torch.manual_seed(5)
    org(x).sum().backward()
    gd = m.lora_down.weight.grad.abs().sum(1)
    gu = m.lora_up.weight.grad.abs().sum(0)
    assert all((gd[i] > 0) == (r - 2 <= i < r) for i in range(8))
    assert all((gu[i] > 0) == (r - 2 <= i < r) for i in range(8))
    # eval: full rank
    m.eval()
    with torch.no_grad():
        full = m._org_forward(x) + x @ m.lora_down.weight.T @ m.lora_up.weight.T * 0.5
        assert max_diff(org(x), full) <= 1e-6
    with pytest.raises(ConfigError):
        DyLoRAModule("d", org, 6, None, args={"unit": 4})


def test_dylora_conv_tensors_and_kohya_args():
    unet, te = tiny_models()
    net = create_network(cfg(network_type="dylora", network_dim=4, conv_dim=4, conv_alpha=2,
                             network_args={"unit": "2"}), unet, te)
    assert net.network_module_name == "networks.dylora"
    assert net.network_args == {"conv_dim": "4", "conv_alpha": "2", "unit": "2"}
    sd = net.state_dict_to_save()
    up = sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"]
    down = sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
    assert tuple(up.shape) == (32, 4, 1, 1) and tuple(down.shape) == (4, 32, 3, 3)
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else "alpha" for k in sd} == \
        {"lora_down", "lora_up", "alpha"}
    lyc = create_network(cfg(network_type="dylora", network_args={"block_size": 4, "use_tucker": "True"}), unet, te)
    assert all(m.unit == 4 for m in lyc.all_modules()) and lyc.network_args["unit"] == "4"


def test_dylora_file_loads_in_diffusers_at_full_rank(tmp_path):
    pytest.importorskip("peft")

    unet, te = tiny_models()
    net = create_network(cfg(network_type="dylora", network_dim=4, network_alpha=2.0, conv_dim=4,
                             conv_alpha=1.0, network_args={"unit": 2}), unet, te)
    fill(net, std=0.2)
    net.apply()
    x, t, ids = inputs()
    with torch.no_grad():
        enc, out = run_models(unet, te, x, t, ids)  # eval models: full rank
    path = tmp_path / "dylora.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {}, overwrite=True)
    enc0, out0, enc2, out2 = diffusers_reload(path, x, t, ids, enc)
    assert max_diff(enc, enc0) > 1e-2 and max_diff(out, out0) > 1e-2
    assert max_diff(enc2, enc) <= 1e-5 and max_diff(out2, out) <= 1e-5


# --- full ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv3x3s2", "nobias"])
def test_full_is_w_plus_diff(kind):
    torch.manual_seed(0)
    org, x = {"linear": (nn.Linear(12, 10), torch.randn(3, 5, 12)),
              "conv3x3s2": (nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.randn(2, 6, 7, 7)),
              "nobias": (nn.Linear(12, 10, bias=False), torch.randn(4, 12))}[kind]
    m = FullModule("f", org).apply()
    assert torch.count_nonzero(m.diff) == 0 and (m.diff_b is None) == (kind == "nobias")
    with torch.no_grad():
        base = m._org_forward(x)
        assert torch.equal(org(x), base)
        for p in m.parameters():
            p.normal_(0, 0.3)
        m.multiplier = 0.5
        W = org.weight + 0.5 * m.diff
        b = None if org.bias is None else org.bias + 0.5 * m.diff_b
        expected = F.conv2d(x, W, b, 2, 1) if m.is_conv else F.linear(x, W, b)
        m.delta_forward = None  # one merged op: the 2-op route is not taken
        y = org(x)
        del m.delta_forward
        assert max_diff(y, expected) <= 1e-5 and max_diff(y, base) > 1e-2
        t = m.tensors_to_save()
        assert set(t) == ({"diff"} if kind == "nobias" else {"diff", "diff_b"})
        assert t["diff"].shape == org.weight.shape
        m.restore()
        m.merge(0.5)
        assert max_diff(org(x), expected) <= 1e-5
        n = m.diff.norm().item()
        m.scale_delta(0.25)
        assert abs(m.delta_weight().norm().item() - 0.25 * n) <= 1e-5 * n


def test_full_network_targets_and_roundtrip(tmp_path):
    unet, te = tiny_models()
    c = cfg(network_type="full", network_args={"use_tucker": "False"})
    net = create_network(c, unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (79, 12)  # LoCon's targets
    assert net.network_args == {"algo": "full"}
    fill(net, std=0.02)
    path = tmp_path / "full.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float16), {}, overwrite=False)
    tensors, _ = read_adapter_file(path)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert tuple(tensors[f"{conv}.diff"].shape) == (32, 32, 3, 3) and tuple(tensors[f"{conv}.diff_b"].shape) == (32,)
    assert not any(k.endswith(".alpha") for k in tensors)
    net2 = create_network(c, *tiny_models())
    assert net2.load_weights(tensors) == {"missing": [], "unexpected": []}
    m2 = net2.unet_modules[conv]
    assert max_diff(m2.diff, net.unet_modules[conv].diff) <= 1e-3 and m2.diff.abs().max() > 1e-2


# --- LoCon Tucker ----------------------------------------------------------------------------------
def test_locon_tucker_formula_and_lycoris():
    torch.manual_seed(0)
    org = nn.Conv2d(12, 10, 3, stride=2, padding=1)
    x = torch.randn(2, 12, 7, 7)
    with torch.no_grad():
        base = org(x)
    m = LoConModule("lora_unet_c", org, 4, 2.0, args={"use_tucker": True}).apply()
    assert m.tucker
    assert tuple(m.lora_down.weight.shape) == (4, 12, 1, 1)
    assert tuple(m.lora_mid.weight.shape) == (4, 4, 3, 3) and m.lora_mid.stride == (2, 2)
    assert tuple(m.lora_up.weight.shape) == (10, 4, 1, 1)
    with torch.no_grad():
        assert torch.equal(org(x), base)
        m.lora_up.weight.normal_(0, 0.3)
        y = org(x)
        D, M, U = m.lora_down.weight[:, :, 0, 0], m.lora_mid.weight, m.lora_up.weight[:, :, 0, 0]
        dw = torch.zeros_like(org.weight)
        for o in range(10):
            for c in range(12):
                dw[o, c] = (U[o][:, None, None, None] * M * D[:, c][None, :, None, None]).sum((0, 1))
        assert max_diff(m.delta_weight(), dw * 0.5) <= 1e-6
        assert max_diff(y, F.conv2d(x, org.weight + dw * 0.5, org.bias, 2, 1)) <= 1e-5
        assert max_diff(y, base) > 1e-2
    assert set(m.tensors_to_save()) == {"lora_down.weight", "lora_mid.weight", "lora_up.weight", "alpha"}
    m.restore()
    lyc = pytest.importorskip("lycoris.modules.locon")
    ref = lyc.LoConModule("lora_unet_c", org, 1.0, lora_dim=4, alpha=2.0, use_tucker=True)
    ref.load_state_dict({k: v.detach().clone() for k, v in m.tensors_to_save().items()}, strict=False)
    ref.apply_to()
    with torch.no_grad():
        assert max_diff(org(x), y) <= 1e-5


def test_locon_tucker_network_only_on_3x3():
    unet, te = tiny_models()
    net = create_network(cfg(network_type="locon", conv_dim=3, network_args={"use_cp": "true"}), unet, te)
    sd = net.state_dict_to_save()
    mids = {k.rsplit(".", 2)[0] for k in sd if ".lora_mid." in k}
    conv3 = {m.name for m in net.all_modules() if m.kind == "conv3x3"}
    assert mids == conv3 and len(conv3) == 8 * 2 + 2  # conv1/conv2 of 8 ResNets, 1 down- and 1 upsampler
    assert tuple(sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight"].shape) == (3, 3, 3, 3)
    assert tuple(sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape) == (3, 32, 1, 1)
    fill(net, std=0.1)
    net.apply()
    x, t, ids = inputs()
    with torch.no_grad():
        _, out = run_models(unet, te, x, t, ids)
        net.restore()
        net.merge(1.0)
        _, out2 = run_models(unet, te, x, t, ids)
    assert max_diff(out, out2) <= 1e-4


# --- GLoRA (experimental) ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv3x3s2"])
def test_glora_formula_and_lycoris(kind):
    from lorakit.adapters.glora import GLoRAModule

    torch.manual_seed(0)
    org, x = {"linear": (nn.Linear(12, 10), torch.randn(3, 12)),
              "conv3x3s2": (nn.Conv2d(6, 8, 3, stride=2, padding=1), torch.randn(2, 6, 7, 7))}[kind]
    with torch.no_grad():
        base = org(x)
    m = GLoRAModule("lora_unet_g", org, 4, 2.0).apply()
    with torch.no_grad():
        assert torch.equal(org(x), base)  # a2, b2 start at zero
        for p in m.parameters():
            p.normal_(0, 0.3)
        m.delta_forward = None  # one merged op: the 2-op route is not taken
        y = org(x)
        del m.delta_forward
        assert max_diff(y, base + m.delta_forward(x)) <= 1e-5  # the values of the 2-op route
        W = org.weight
        A = m.a1.weight.flatten(1) @ m.a2.weight.flatten(1)  # (in, in)
        if m.is_conv:
            wa = torch.stack([torch.stack([(W[o] * A[:, c, None, None]).sum(0) for c in range(6)])
                              for o in range(8)])
            wb = (m.b1.weight.flatten(1) @ m.b2.weight.flatten(1)).view(W.shape)
            expected = F.conv2d(x, W + 0.5 * (wa + wb), org.bias, 2, 1)
        else:
            expected = F.linear(x, W + 0.5 * (W @ A + m.b1.weight @ m.b2.weight), org.bias)
        assert max_diff(y, expected) <= 1e-5 and max_diff(y, base) > 1e-2
        n = m.delta_weight().norm().item()
        m.scale_delta(0.25)
        assert abs(m.delta_weight().norm().item() - 0.25 * n) <= 1e-4 * n
        m.scale_delta(4.0)
    assert set(m.tensors_to_save()) == {"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"}
    m.restore()
    lyc = pytest.importorskip("lycoris.modules.glora")
    ref = lyc.GLoRAModule("lora_unet_g", org, 1.0, lora_dim=4, alpha=2.0)
    ref.load_state_dict({k: v.detach().clone() for k, v in m.tensors_to_save().items()}, strict=False)
    ref.apply_to()
    with torch.no_grad():
        assert max_diff(org(x), y) <= 1e-5


def test_glora_network_args_and_targets():
    unet, te = tiny_models()
    net = create_network(cfg(network_type="glora", network_args={"use_tucker": "False"}), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (79, 12)
    assert net.network_args == {"algo": "glora", "conv_dim": "4", "conv_alpha": "2"}
    assert all(getattr(type(m), "experimental", False) for m in net.all_modules())
