"""LoRA / LoCon modules and network on tiny models: math, dropouts, max-norm, groups, files, interop."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapters_helpers import cfg, diffusers_reload, inputs, randomize_up, run_models, tiny_models
from lorakit.adapters.file import read_adapter_file, save_adapter_file, sshs_hashes
from lorakit.adapters.lora import LoRAModule
from lorakit.adapters.network import create_network
from lorakit.errors import ConfigError, UserError



def kohya_delta(up: torch.Tensor, down: torch.Tensor, scale: float) -> torch.Tensor:
    """sd-scripts' formulas (networks/lora.py get_weight), written independently of ours."""
    if down.dim() == 2:
        return up @ down * scale
    if down.shape[2:] == (1, 1):
        return (up.squeeze(3).squeeze(2) @ down.squeeze(3).squeeze(2)).unsqueeze(2).unsqueeze(3) * scale
    return F.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3) * scale


def wrapped(org: nn.Module, dim=4, alpha=2.0, **kw) -> LoRAModule:
    m = LoRAModule("lora_test", org, dim, alpha, **kw)
    with torch.no_grad():
        m.lora_up.weight.normal_(0, 0.3)
    return m.apply()


# --- one module ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv3x3", "conv3x3s2"])
def test_forward_equals_bypass_and_merged_weight(kind):
    torch.manual_seed(0)
    org, x = {
        "linear": (nn.Linear(12, 10), torch.randn(3, 5, 12)),
        "conv1x1": (nn.Conv2d(12, 10, 1), torch.randn(2, 12, 6, 6)),
        "conv3x3": (nn.Conv2d(12, 10, 3, padding=1), torch.randn(2, 12, 6, 6)),
        "conv3x3s2": (nn.Conv2d(12, 10, 3, stride=2, padding=1), torch.randn(2, 12, 7, 7)),
    }[kind]
    base = org(x).detach()
    m = wrapped(org, dim=4, alpha=3.0)
    m.multiplier = 0.7
    assert m.scale == 0.75
    with torch.no_grad():
        y = org(x)
        expected = base + m.lora_up(m.lora_down(x)) * 0.7 * 0.75
        assert (y - expected).abs().max().item() <= 1e-6
        dw = m.delta_weight()
        assert dw.shape == org.weight.shape
        ref = kohya_delta(m.lora_up.weight, m.lora_down.weight, 0.75)
        assert (dw - ref).abs().max().item() <= 1e-6
        merged = m.op(x, org.weight + 0.7 * dw) + (org.bias.view(1, -1, 1, 1) if m.is_conv else org.bias)
        assert (merged - y).abs().max().item() <= 1e-5
        assert (y - base).abs().max().item() > 1e-2  # the delta is not zero
    m.restore()
    assert "forward" not in org.__dict__
    with torch.no_grad():
        assert torch.equal(org(x), base)
        m.apply()
        m.merge(0.7)  # merge with the forward still replaced would double: restore first
        m.restore()
        assert (org(x) - y).abs().max().item() <= 1e-5


@pytest.mark.parametrize("kind", ["linear", "conv1x1", "conv3x3s2", "tucker"])
def test_merged_op_equals_the_bypass_in_values_and_gradients(kind):
    """network_args merged_op=true: op(x, W + m dW) + b, the same forward and gradients as the bypass;
    while rank dropout acts it runs the bypass (same random draws as merged_op=false)."""
    from lorakit.adapters.lora import LoConModule

    def build(merged: bool, **kw):
        torch.manual_seed(0)
        org = nn.Linear(12, 10) if kind == "linear" else nn.Conv2d(
            12, 10, 1 if kind == "conv1x1" else 3, stride=2 if kind == "conv3x3s2" else 1, padding=int(kind != "conv1x1"))
        args = {"merged_op": merged, "use_tucker": kind == "tucker"}
        m = LoConModule("lora_test", org, 4, 3.0, args=args, **kw)
        with torch.no_grad():
            m.lora_up.weight.normal_(0, 0.3)
        m.multiplier = 0.7
        return org, m.apply()

    torch.manual_seed(1)
    x = torch.randn(3, 5, 12) if kind == "linear" else torch.randn(2, 12, 7, 7)
    outs, grads = [], []
    for merged in (False, True):
        org, m = build(merged)
        if kind == "tucker":
            assert m.tucker
        y = org(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append([p.grad for p in m.parameters()])
    assert (outs[0] - outs[1]).abs().max().item() <= 1e-5
    m.scaled_delta = m.delta_forward = None  # the merged module never runs the bypass ...
    assert torch.equal(org(x).detach(), outs[1])
    m.train()  # ... nor in training without per-sample dropout
    assert torch.equal(org(x).detach(), outs[1])
    for g0, g1 in zip(*grads):
        assert (g0 - g1).abs().max().item() <= 1e-4 * max(1.0, g0.abs().max().item())
    # rank dropout while training: the bypass, with the same draws
    ys = []
    for merged in (False, True):
        org, m = build(merged, rank_dropout=0.5)
        m.train()
        torch.manual_seed(5)
        ys.append(org(x).detach())
    assert torch.equal(ys[0], ys[1])


def test_init_alpha_and_scale():
    torch.manual_seed(0)
    org = nn.Linear(300, 20)
    m = LoRAModule("x", org, 16, None)
    assert m.scale == 1.0 and float(m.alpha) == 16.0 and m.alpha.dim() == 0
    assert LoRAModule("x", org, 16, 0).scale == 1.0  # alpha 0 -> dim
    assert LoRAModule("x", org, 16, 4.0).scale == 0.25
    assert torch.count_nonzero(m.lora_up.weight) == 0
    bound = 1 / math.sqrt(300)  # kaiming_uniform(a=sqrt(5)) on fan_in 300
    w = m.lora_down.weight
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.95 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.05 * bound
    x = torch.randn(4, 300)
    with torch.no_grad():
        base = org(x)
        m.apply()
        assert torch.equal(org(x), base)  # zero up: a fresh adapter changes nothing


def test_half_precision_base_with_float32_adapter():
    torch.manual_seed(0)
    org = nn.Linear(8, 6).to(torch.bfloat16)
    x = torch.randn(2, 8)
    m = wrapped(org, dim=2, alpha=1.0)
    assert m.lora_down.weight.dtype == torch.float32
    with torch.no_grad():
        y = org(x.to(torch.bfloat16))
        assert y.dtype == torch.bfloat16
        expected = m._org_forward(x.to(torch.bfloat16)).float() + m.lora_up(m.lora_down(x)) * 0.5
        assert (y.float() - expected).abs().max().item() <= 2e-2
        assert (y.float() - m._org_forward(x.to(torch.bfloat16)).float()).abs().max().item() > 5e-2


def test_autocast_forward_makes_no_float32_copy_of_the_input():
    """Under bf16 autocast the adapter's input is not cast up to float32 first (a copy in forward and
    one in backward per module); the output is bit-identical to that older route."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountUpcasts(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default and args[0].dtype == torch.bfloat16 \
                    and kwargs.get("dtype") == torch.float32:
                CountUpcasts.n += 1
            return func(*args, **kwargs)

    torch.manual_seed(0)
    org = nn.Linear(8, 6).to(torch.bfloat16)
    m = wrapped(org, dim=2, alpha=1.0)
    nn.init.normal_(m.lora_up.weight)
    x = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16), CountUpcasts():
        y = org(x)
        old_route = m._org_forward(x) + (m.lora_up(m.lora_down(x.float())) * 0.5).to(torch.bfloat16)
    assert CountUpcasts.n == 1  # the old route's own x.float(), nothing from the adapter
    assert y.dtype == torch.bfloat16 and torch.equal(y, old_route)
    y.float().sum().backward()
    assert m.lora_down.weight.grad is not None and m.lora_down.weight.grad.dtype == torch.float32


def test_restore_keeps_an_instance_forward():
    org = nn.Linear(4, 4)
    marker = org.forward
    org.forward = lambda x: marker(x) * 2  # someone else's wrapper
    other = org.forward
    m = LoRAModule("x", org, 2, None).apply()
    assert org.forward == m.forward
    m.restore()
    assert org.forward is other


def test_module_dropout_skips_delta_in_training_only():
    torch.manual_seed(0)
    org = nn.Linear(8, 8)
    x = torch.randn(2, 8)
    m = wrapped(org, module_dropout=0.5)
    with torch.no_grad():
        base = m._org_forward(x)
        full = base + m.lora_up(m.lora_down(x)) * m.scale
        torch.manual_seed(1)
        skipped = sum(torch.equal(org(x), base) for _ in range(400))
        assert 160 <= skipped <= 240  # ~ p = 0.5
        org.eval()
        assert all(torch.equal(org(x), full) for _ in range(20))
        org.train()
        m.eval()
        assert all(torch.equal(org(x), full) for _ in range(20))


@pytest.mark.parametrize("shape", [(3, 5, 16), (3, 16)])
def test_network_and_rank_dropout_follow_kohya(shape):
    torch.manual_seed(0)
    org = nn.Linear(16, 12)
    x = torch.randn(*shape)
    m = wrapped(org, dim=6, alpha=3.0, dropout=0.3, rank_dropout=0.4)
    with torch.no_grad():
        base = m._org_forward(x)
        torch.manual_seed(5)
        h = F.dropout(m.lora_down(x), p=0.3)
        mask = torch.rand((shape[0], 6)) > 0.4
        mask = mask.unsqueeze(1) if len(shape) == 3 else mask
        expected = base + m.lora_up(h * mask) * (0.5 / 0.6)
        torch.manual_seed(5)
        y = org(x)
        assert (y - expected).abs().max().item() <= 1e-6
        eval_out = base + m.lora_up(m.lora_down(x)) * 0.5
        assert (y - eval_out).abs().max().item() > 1e-3  # dropouts change training outputs
        org.eval()
        assert (org(x) - eval_out).abs().max().item() <= 1e-6  # and are off in eval


def test_rank_dropout_on_conv_masks_channels():
    torch.manual_seed(0)
    org = nn.Conv2d(6, 8, 3, padding=1)
    x = torch.randn(2, 6, 5, 5)
    m = wrapped(org, dim=4, alpha=4.0, rank_dropout=0.5)
    with torch.no_grad():
        base = m._org_forward(x)
        torch.manual_seed(2)
        mask = (torch.rand((2, 4)) > 0.5).view(2, 4, 1, 1)
        expected = base + m.lora_up(m.lora_down(x) * mask) * 2.0
        torch.manual_seed(2)
        assert (org(x) - expected).abs().max().item() <= 1e-6


# --- the network on the tiny models -----------------------------------------------------
def test_network_apply_restore_and_base_untouched():
    unet, te = tiny_models()
    keys = list(unet.state_dict()) + list(te.state_dict())
    x, t, ids = inputs()
    with torch.no_grad():
        enc0, out0 = run_models(unet, te, x, t, ids)
    net = create_network(cfg(conv_dim=3, conv_alpha=1.5), unet, te)
    # 4 Transformer2DModel x 12 + 8 ResNets x 3 + 5 conv_shortcut + 1 down- and 1 upsampler; 2 CLIP layers x 6
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (79, 12)
    randomize_up(net)
    net.apply()
    assert list(unet.state_dict()) + list(te.state_dict()) == keys  # base model unchanged
    with torch.no_grad():
        enc1, out1 = run_models(unet, te, x, t, ids)
        assert (enc1 - enc0).abs().max().item() > 1e-2 and (out1 - out0).abs().max().item() > 1e-2
        net.set_multiplier(0.0)
        assert torch.equal(run_models(unet, te, x, t, ids)[1], out0)
        net.set_multiplier(1.0)
        net.restore()
        enc2, out2 = run_models(unet, te, x, t, ids)
        assert torch.equal(enc2, enc0) and torch.equal(out2, out0)
        net.merge(1.0)  # bake the adapters in: same outputs as applied
        enc3, out3 = run_models(unet, te, x, t, ids)
        assert (enc3 - enc1).abs().max().item() <= 1e-4 and (out3 - out1).abs().max().item() <= 1e-4
    # kohya state dict names through nn.Module.state_dict too
    sd = net.state_dict()
    assert len(sd) == 3 * 91 and "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in sd


def test_gradients_reach_adapters_only_and_checkpointing_is_transparent():
    def loss_and_grads(checkpointing: bool):
        unet, te = tiny_models()
        net = create_network(cfg(conv_dim=3, rank_dropout=0.25, network_dropout=0.1), unet, te)
        randomize_up(net)
        net.apply()
        net.param_groups(1.0, 1.0)
        calls = []
        unet.down_blocks[0].resnets[0].conv1.register_forward_hook(lambda *a: calls.append(1))
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        te.train()
        x, t, ids = inputs()
        torch.manual_seed(11)
        enc, out = run_models(unet, te, x, t, ids)
        loss = out.pow(2).mean()
        loss.backward()
        assert all(p.grad is None for p in list(unet.parameters()) + list(te.parameters()))
        grads = {n: p.grad.clone() for n, p in net.named_parameters()}
        assert len(calls) == (2 if checkpointing else 1)  # recomputed in backward when checkpointing
        return loss.item(), grads

    l0, g0 = loss_and_grads(False)
    l1, g1 = loss_and_grads(True)
    assert len(g0) == 2 * 91 and all(g.abs().sum() > 0 for g in g0.values())
    assert abs(l0 - l1) <= 1e-6
    assert max((g0[k] - g1[k]).abs().max().item() for k in g0) <= 1e-5


def test_param_groups_order_and_zero_lr():
    unet, te = tiny_models()
    net = create_network(cfg(conv_dim=3), unet, te)
    groups = net.param_groups(5e-5, 1e-4)
    assert [(g["name"], g["lr"], len(g["params"])) for g in groups] == \
        [("textencoder", 5e-5, 24), ("unet", 1e-4, 158)]
    groups = net.param_groups(0.0, 1e-4)
    assert [(g["name"], len(g["params"])) for g in groups] == [("unet", 158)]
    assert not any(p.requires_grad for m in net.text_encoder_modules.values() for p in m.parameters())
    assert all(p.requires_grad for m in net.unet_modules.values() for p in m.parameters())
    groups = net.param_groups(1e-4, 0.0)
    assert [g["name"] for g in groups] == ["textencoder"]
    assert not any(p.requires_grad for m in net.unet_modules.values() for p in m.parameters())


def test_max_norm_caps_keys():
    unet, te = tiny_models()
    net = create_network(cfg(conv_dim=3, conv_alpha=1.5), unet, te)
    randomize_up(net, std=0.5)
    before = {m.name: kohya_delta(m.lora_up.weight, m.lora_down.weight, m.scale).norm().item()
              for m in net.all_modules()}
    ranked = sorted(before.values())
    # about half the keys over it, none within rounding of it
    limit = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2
    over = sum(v > limit for v in before.values())
    assert 0 < over < len(before)
    keys_scaled, avg, mx = net.apply_max_norm(limit)
    assert keys_scaled == over
    after = {m.name: kohya_delta(m.lora_up.weight, m.lora_down.weight, m.scale).norm().item()
             for m in net.all_modules()}
    for name, n in after.items():
        if before[name] > limit:
            assert abs(n - limit) <= 1e-4
        else:
            assert abs(n - before[name]) <= 1e-6 * max(1.0, n)
    expected = [min(v, limit) for v in before.values()]
    assert abs(avg - sum(expected) / len(expected)) <= 1e-4 and abs(mx - limit) <= 1e-4


def test_save_load_roundtrip_and_key_format(tmp_path):
    unet, te = tiny_models()
    net = create_network(cfg(conv_dim=3, conv_alpha=1.5), unet, te)
    randomize_up(net)
    sd = net.state_dict_to_save(torch.float16)
    assert len(sd) == 3 * 91
    name = "lora_unet_up_blocks_1_attentions_0_transformer_blocks_0_attn1_to_q"
    assert sd[f"{name}.lora_down.weight"].dtype == torch.float16
    assert sd[f"{name}.alpha"].dim() == 0 and sd[f"{name}.alpha"].dtype == torch.float32
    assert float(sd[f"{name}.alpha"]) == 2.0
    assert float(sd["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 1.5
    assert tuple(sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight"].shape) == (32, 3, 1, 1)
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in sd)
    path = tmp_path / "a.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {"ss_network_dim": "4"}, overwrite=False)
    unet2, te2 = tiny_models()
    torch.manual_seed(123)  # other initial down weights than net's, so that loading them is what the test sees
    net2 = create_network(cfg(conv_dim=3, conv_alpha=1.5), unet2, te2)
    assert not torch.equal(net2.state_dict_to_save()[f"{name}.lora_down.weight"], sd[f"{name}.lora_down.weight"].float())
    info = net2.load_weights(str(path))
    assert info == {"missing": [], "unexpected": []}
    for k, v in net.state_dict_to_save().items():
        assert torch.equal(net2.state_dict_to_save()[k], v)
    # keys written under transformers 5 without text_model_ load too; alpha from the file wins
    tensors, _ = read_adapter_file(path)
    renamed = {k.replace("lora_te_text_model_", "lora_te_"): v for k, v in tensors.items()}
    renamed[f"{name}.alpha"] = torch.tensor(1.0)
    net3 = create_network(cfg(conv_dim=3, conv_alpha=1.5), *tiny_models())
    assert net3.load_weights(renamed) == {"missing": [], "unexpected": []}
    assert net3.unet_modules[name].scale == 0.25
    no_alpha = {k: v for k, v in tensors.items() if not k.endswith(".alpha")}
    assert net3.load_weights(no_alpha)["missing"] == []
    assert net3.unet_modules[name].scale == 1.0  # no alpha in the file: alpha = dim, as the loaders do
    net4 = create_network(cfg(network_dim=8, conv_dim=3), *tiny_models())
    with pytest.raises(ConfigError) as e:
        net4.load_weights(tensors)
    assert e.value.key == "network_dim"


# --- the file ------------------------------------------------------------------------------
def test_file_hashes_match_an_independent_computation(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"b.weight": torch.randn(300_000, generator=g), "a.alpha": torch.tensor(4.0),
               "c.weight": torch.randn(7, 3, generator=g).half()}
    md = {"ss_output_name": "x", "ss_network_args": json.dumps({"conv_dim": "8"}), "modelspec.title": "t"}
    path = tmp_path / "f.safetensors"
    save_adapter_file(path, tensors, md, overwrite=False)
    loaded, meta = read_adapter_file(path)
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert {k: meta[k] for k in md} == md and all(isinstance(v, str) for v in meta.values())
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert meta["sshs_model_hash"] == hashlib.sha256(raw[8 + n:]).hexdigest()  # data only
    # legacy: the file as kohya would serialise it with only ss_* metadata, 64 KiB at 1 MiB
    header = json.loads(raw[8:8 + n])
    header["__metadata__"] = {k: v for k, v in md.items() if k.startswith("ss_")}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    kohya_bytes = len(hb).to_bytes(8, "little") + hb + raw[8 + n:]
    # (safetensors orders metadata keys by a hash map, so only the header's length is fixed:
    # the 1 MiB window lies past the header, so it does not depend on that order)
    assert len(hb) < 0x100000
    legacy = hashlib.sha256(kohya_bytes[0x100000:0x110000]).hexdigest()[:8]
    assert meta["sshs_legacy_hash"] == legacy and legacy != hashlib.sha256(b"").hexdigest()[:8]
    # user metadata does not change the hashes; a longer ss_ value shifts the legacy window
    assert sshs_hashes(tensors, {**md, "modelspec.title": "other"}) == (meta["sshs_model_hash"], legacy)
    h2 = sshs_hashes(tensors, {**md, "ss_output_name": "a much longer name"})
    assert h2[0] == meta["sshs_model_hash"] and h2[1] != legacy
    with pytest.raises(UserError):
        save_adapter_file(path, tensors, md, overwrite=False)
    with pytest.raises(TypeError):
        save_adapter_file(tmp_path / "g.safetensors", tensors, {"ss_epoch": 3}, overwrite=True)
    assert not (tmp_path / "g.safetensors").exists()
    save_adapter_file(path, tensors, {}, overwrite=True)
    assert read_adapter_file(path)[1]["sshs_model_hash"] == meta["sshs_model_hash"]
    with pytest.raises(UserError):
        read_adapter_file(tmp_path / "missing.safetensors")


# --- interop: diffusers' own kohya loader (peft backend) ---------------------------------------
@pytest.mark.parametrize("conv_dim", [None, 3])
def test_diffusers_load_lora_weights_reproduces_outputs(tmp_path, conv_dim):
    pytest.importorskip("peft")

    unet, te = tiny_models()
    net = create_network(cfg(network_dim=4, network_alpha=2.0, conv_dim=conv_dim, conv_alpha=1.5), unet, te)
    randomize_up(net)
    net.apply()
    x, t, ids = inputs()
    with torch.no_grad():
        enc, out = run_models(unet, te, x, t, ids)
    path = tmp_path / "adapter.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {"ss_network_module": "networks.lora"},
                      overwrite=True)
    enc0, out0, enc2, out2 = diffusers_reload(path, x, t, ids, enc)
    assert (enc - enc0).abs().max().item() > 1e-2 and (out - out0).abs().max().item() > 1e-2
    assert (enc2 - enc).abs().max().item() <= 1e-5
    assert (out2 - out).abs().max().item() <= 1e-5
