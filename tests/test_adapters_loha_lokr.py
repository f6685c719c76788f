"""LoHa / LoKr: LyCORIS as an independent loader, the loaders' scale rule, dropouts, max-norm, file size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapters_helpers import LYCORIS_PRESET_TOML, cfg, inputs, run_models, sd15_meta, tiny_models
from lorakit.adapters.base import AdapterModule
from lorakit.adapters.file import read_adapter_file, save_adapter_file
from lorakit.adapters.loha import LoHaModule
from lorakit.adapters.lokr import LoKrModule, factorization
from lorakit.adapters.network import create_network



# (network_type, network_dim, network_alpha, conv_dim, conv_alpha, network_args)
CASES = {
    "loha": ("loha", 4, 2.0, 3, 1.5, {}),
    "loha-tucker": ("loha", 4, 2.0, 3, 5.0, {"use_tucker": True}),
    "lokr": ("lokr", 2, 3.0, 2, 0.5, {}),
    "lokr-both-tucker": ("lokr", 2, 3.0, 2, 0.5, {"decompose_both": True, "use_tucker": True, "factor": 8}),
    "lokr-full": ("lokr", 8, 3.0, 8, 0.5, {}),  # every W2 a full matrix, many both-full modules: scale 1
}


def build(case: str, seed: int = 0, **extra):
    algo, dim, alpha, cdim, calpha, args = CASES[case]
    unet, te = tiny_models(seed)
    net = create_network(cfg(network_type=algo, network_dim=dim, network_alpha=alpha, conv_dim=cdim,
                             conv_alpha=calpha, network_args=args, **extra), unet, te)
    randomize(net)
    return net, unet, te


def randomize(net, seed: int = 1) -> None:
    """Random non-zero factors, sized so that every delta W is a visible but small change."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.all_modules():
            for name, p in m.named_parameters():
                std = 0.3 if m.algo == "loha" else (0.05 if "w2" in name else 0.5)
                p.copy_(torch.randn(p.shape, generator=g) * std)


# --- the delta from the file, by the loaders' formula (written independently) ----------------
def file_delta(t: dict[str, torch.Tensor], shape: torch.Size) -> torch.Tensor:
    alpha = float(t["alpha"])
    if "hada_w1_a" in t:
        dim = t["hada_w1_b"].shape[0]
        if "hada_t1" in t:
            h1 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
            h2 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
        else:
            h1 = (t["hada_w1_a"] @ t["hada_w1_b"]).reshape(shape)
            h2 = (t["hada_w2_a"] @ t["hada_w2_b"]).reshape(shape)
        return h1 * h2 * (alpha / dim)
    dim = t["lokr_w1_b"].shape[0] if "lokr_w1_b" in t else t["lokr_w2_b"].shape[0] if "lokr_w2_b" in t else None
    scale = alpha / dim if dim is not None else 1.0
    w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = torch.einsum("ijkl,ip,jr->prkl", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
    else:
        w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
        if len(shape) == 4:
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    # kron by hand: block (i, j) of the result is w1[i, j] * w2
    a, c = w1.shape[:2]
    b, d = w2.shape[:2]
    out = torch.zeros(a * b, c * d, *w2.shape[2:])
    for i in range(a):
        for j in range(c):
            out[i * b:(i + 1) * b, j * d:(j + 1) * d] = w1[i, j] * w2
    return out.reshape(shape) * scale


@pytest.mark.parametrize("case", list(CASES))
def test_file_formula_reproduces_training_delta(case, tmp_path):
    net, _, _ = build(case)
    path = tmp_path / "a.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32), {}, overwrite=False)
    tensors, _ = read_adapter_file(path)
    alphas_differ = both_full = 0
    for m in net.all_modules():
        t = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.split(".", 1)[0] == m.name}
        assert set(t) == set(m.tensors_to_save())
        dw = m.delta_weight()
        ref = file_delta(t, m.org.weight.shape)
        assert (dw - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
        assert ref.abs().max().item() > 1e-4
        alphas_differ += float(t["alpha"]) != m.dim
        both_full += "lokr_w1" in t and "lokr_w2" in t
    assert alphas_differ > 0
    if case == "lokr-full":
        assert both_full > 0
        m = net.unet_modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
        assert m.full_w1 and m.full_w2 and m.scale == 1.0 and float(m.alpha) == 8.0
    if case == "lokr-both-tucker":
        assert any("lokr_t2" in m.tensors_to_save() for m in net.all_modules())
        assert any("lokr_w1_a" in m.tensors_to_save() for m in net.all_modules())
    if case == "loha-tucker":
        m = net.unet_modules["lora_unet_down_blocks_0_resnets_0_conv1"]
        assert tuple(m.hada_t1.shape) == (3, 3, 3, 3) and tuple(m.hada_w1_a.shape) == (3, 32)


# --- LyCORIS 4.1.3 as an independent loader (the lycoris_kohya fixture: conftest.py) --------------
@pytest.mark.parametrize("route", ["from_weights", "create_network"])
@pytest.mark.parametrize("case", list(CASES))
def test_lycoris_loads_the_file_with_the_same_outputs(case, route, tmp_path, lycoris_kohya):
    """Two LyCORIS routes: the loader (modules inferred from tensor shapes, as the UIs do) and
    LyCORIS's own network built from ss_network_args with the file loaded (resuming training)."""
    if route == "from_weights" and case == "lokr-both-tucker":
        pytest.skip("lycoris 4.1.3 reload reads the rank of a Tucker LoKr with a full lokr_w1 from "
                    "lokr_w2_a.size(1), which is b there: the module it builds has no lokr_w2_a")
    net, unet, te = build(case)
    net.apply()
    x, t, ids = inputs()
    with torch.no_grad():
        enc, out = run_models(unet, te, x, t, ids)
    path = tmp_path / "a.safetensors"
    save_adapter_file(path, net.state_dict_to_save(torch.float32),
                      {"ss_network_module": net.network_module_name}, overwrite=True)
    tensors, meta = read_adapter_file(path)
    assert meta["ss_network_module"] == "lycoris.kohya"
    # transformers 5: LyCORIS builds TE names without text_model_
    sd = {k.replace("lora_te_text_model_", "lora_te_"): v for k, v in tensors.items()}
    unet2, te2 = tiny_models()
    with torch.no_grad():
        enc0, out0 = run_models(unet2, te2, x, t, ids)
    if route == "from_weights":
        ly, _ = lycoris_kohya.create_network_from_weights(1.0, None, None, te2, unet2, weights_sd=sd)
        ly.apply_to(te2, unet2, apply_text_encoder=True, apply_unet=True)
    else:
        algo, dim, alpha, cdim, calpha, _ = CASES[case]
        preset = tmp_path / "preset.toml"
        preset.write_text(LYCORIS_PRESET_TOML)
        args = net.all_modules()[0].args
        ly = lycoris_kohya.create_network(1.0, dim, alpha, None, te2, unet2, preset=str(preset), algo=algo,
                                          conv_dim=cdim, conv_alpha=calpha, **args)
        ly.apply_to(te2, unet2, apply_text_encoder=True, apply_unet=True)
        info = ly.load_state_dict(sd, strict=False)
        assert not info.unexpected_keys and not [k for k in info.missing_keys if "scalar" not in k]
    assert (len(ly.unet_loras), len(ly.text_encoder_loras)) == (len(net.unet_modules),
                                                                len(net.text_encoder_modules))
    ly.eval()
    with torch.no_grad():
        enc2 = te2(ids)[0]
        out2 = unet2(x, t, enc).sample  # same conditioning: the UNet compared on its own
    assert (enc - enc0).abs().max().item() > 1e-2 and (out - out0).abs().max().item() > 1e-2
    assert (enc2 - enc).abs().max().item() <= 1e-5
    assert (out2 - out).abs().max().item() <= 1e-5


def test_factorization_matches_lycoris_and_its_table():
    lyc = pytest.importorskip("lycoris.functional.general")
    for dim in range(1, 1500):
        for f in (-1, 2, 3, 4, 8, 16):
            assert factorization(dim, f) == lyc.factorization(dim, f), (dim, f)
    # (LyCORIS's docstring table says 360 -> (8, 45) and, with factor 16, (12, 30); its code gives these)
    assert [factorization(d) for d in (127, 128, 250, 360, 512, 1024, 320, 768)] == \
        [(1, 127), (8, 16), (10, 25), (18, 20), (16, 32), (32, 32), (16, 20), (24, 32)]
    assert [factorization(360, f) for f in (2, 4, 8, 16)] == [(2, 180), (4, 90), (8, 45), (15, 24)]


# --- one module: init, merged op, dropouts, precision ------------------------------------------
def test_fresh_adapters_change_nothing_and_init_follows_lycoris():
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    m = LoHaModule("x", lin, 4, 2.0)
    assert torch.count_nonzero(m.hada_w2_a) == 0
    assert abs(m.hada_w1_b.std().item() - 1.0) < 0.15 and abs(m.hada_w1_a.std().item() - 0.1) < 0.02
    k = LoKrModule("x", lin, 2, 1.0)
    assert k.shapes == ((6, 8), (8, 8)) and torch.count_nonzero(k.lokr_w2_b) == 0
    assert torch.count_nonzero(k.lokr_w1) == 48
    x = torch.randn(3, 64)
    with torch.no_grad():
        base = lin(x)
        for mod in (m, k):
            mod.apply()
            assert torch.equal(lin(x), base)
            mod.restore()


MODULE_CASES = [(LoHaModule, {}), (LoHaModule, {"use_tucker": True}), (LoKrModule, {}),
                (LoKrModule, {"decompose_both": True, "use_tucker": True, "factor": 4})]


def random_module(cls, args, org, dim=2, alpha=3.0, seed=0, **kw):
    m = cls("x", org, dim, alpha, args=args, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.apply()


@pytest.mark.parametrize("cls, args", MODULE_CASES)
@pytest.mark.parametrize("layer", ["linear", "conv3x3s2"])
def test_merged_op_equals_base_plus_delta_op(cls, args, layer):
    torch.manual_seed(0)
    org, x = ((nn.Linear(32, 48), torch.randn(2, 5, 32)) if layer == "linear"
              else (nn.Conv2d(32, 48, 3, stride=2, padding=1), torch.randn(2, 32, 7, 7)))
    org.requires_grad_(False)
    with torch.no_grad():
        base = org(x)
    m = random_module(cls, args, org)
    m.multiplier = 0.7
    m.delta_forward = None  # the two-op form is not what runs
    y = org(x)
    ref = base + 0.7 * m.op(x, m.delta_weight())  # LyCORIS's / peft's two-op form
    assert (y - ref).abs().max().item() <= 1e-4
    assert (y - base).abs().max().item() > 1e-2
    y.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    assert org.weight.grad is None


@pytest.mark.parametrize("cls, args", MODULE_CASES)
def test_bf16_base_with_fp32_adapter(cls, args):
    torch.manual_seed(0)
    org = nn.Conv2d(32, 32, 3, padding=1).to(torch.bfloat16).requires_grad_(False)
    x = torch.randn(2, 32, 6, 6)
    m = random_module(cls, args, org)
    assert all(p.dtype == torch.float32 for p in m.parameters())
    y = org(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    ref = F.conv2d(x.double(), org.weight.double() + m.delta_weight().double(), org.bias.double(), padding=1)
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() <= 3e-2
    y.float().pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters())


@pytest.mark.parametrize("cls, args", MODULE_CASES[::2] + [(LoKrModule, {"factor": 4})])
def test_dropouts_change_training_outputs_only(cls, args):
    torch.manual_seed(0)
    org = nn.Linear(32, 48)
    x = torch.randn(4, 32)
    m = random_module(cls, args, org, dim=3)
    with torch.no_grad():
        eval_out = m._org_forward(x) + m.op(x, m.delta_weight())
        for kw in ({"dropout": 0.3}, {"rank_dropout": 0.5}, {"module_dropout": 0.5}):
            m.dropout, m.rank_dropout, m.module_dropout = kw.get("dropout"), kw.get("rank_dropout"), \
                kw.get("module_dropout")
            m.train()
            org.train()
            outs = [org(x) for _ in range(8)]
            assert max((o - eval_out).abs().max().item() for o in outs) > 1e-3, kw
            torch.manual_seed(4)
            a = org(x)
            torch.manual_seed(4)
            assert torch.equal(org(x), a)  # same RNG state, same masks (checkpoint recomputation)
            org.eval()
            assert (org(x) - eval_out).abs().max().item() <= 1e-5
            org.train()
            m.eval()
            assert (org(x) - eval_out).abs().max().item() <= 1e-5


@pytest.mark.parametrize("cls, args", [(LoHaModule, {}), (LoKrModule, {"decompose_both": True, "factor": 4}),
                                       (LoKrModule, {})])
def test_rank_and_network_dropout_keep_the_expected_delta(cls, args):
    """Both dropouts are scaled by 1/(1-p): the mean training delta W is the eval delta W."""
    torch.manual_seed(0)
    m = random_module(cls, args, nn.Linear(32, 48), dim=3, rank_dropout=0.4, dropout=0.2)
    m.train()
    with torch.no_grad():
        ref = m.delta_weight()
        n = 3000
        mean = sum(m.training_delta() for _ in range(n)) / n
        zeros = (m.training_delta() == 0).float().mean().item()
    assert ((mean - ref).norm() / ref.norm()).item() < 0.1
    assert zeros >= 0.15  # elements dropped


def test_lokr_rank_dropout_on_full_matrices_masks_rows():
    torch.manual_seed(0)
    m = random_module(LoKrModule, {}, nn.Linear(8, 8), dim=8, rank_dropout=0.5)
    assert m.full_w1 and m.full_w2
    m.train()
    with torch.no_grad():
        ref = m.delta_weight()
        torch.manual_seed(3)
        dw = m.training_delta()
        torch.manual_seed(3)
        keep = (torch.rand(8) > 0.5).float() * 2.0
    assert torch.allclose(dw, ref * keep[:, None])


# --- network: gradient checkpointing, max-norm ----------------------------------------------------
@pytest.mark.parametrize("case", ["loha-tucker", "lokr-both-tucker"])
def test_gradient_checkpointing_is_transparent(case):
    def loss_and_grads(checkpointing: bool):
        net, unet, te = build(case, rank_dropout=0.25, network_dropout=0.1)
        net.apply()
        net.param_groups(1.0, 1.0)
        if checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        te.train()
        x, t, ids = inputs()
        torch.manual_seed(11)
        out = run_models(unet, te, x, t, ids)[1]
        loss = out.pow(2).mean()
        loss.backward()
        assert all(p.grad is None for p in list(unet.parameters()) + list(te.parameters()))
        return loss.item(), {n: p.grad.clone() for n, p in net.named_parameters()}

    l0, g0 = loss_and_grads(False)
    l1, g1 = loss_and_grads(True)
    # a factor with every rank dropped gets no gradient that step (p^r per factor): nearly all do
    assert sum(g.abs().sum().item() > 0 for g in g0.values()) >= 0.85 * len(g0)
    assert abs(l0 - l1) <= 1e-6 * max(1.0, abs(l0))
    assert max(((g0[k] - g1[k]).abs().max() / (g0[k].abs().max() + 1e-12)).item() for k in g0) <= 1e-4


@pytest.mark.parametrize("case", list(CASES))
def test_max_norm_caps_every_key(case):
    net, _, _ = build(case)
    before = {m.name: m.delta_weight().norm().item() for m in net.all_modules()}
    ranked = sorted(before.values())
    # about half the keys over it, none within rounding of it
    limit = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2
    over = sum(v > limit for v in before.values())
    assert 0 < over < len(before)
    keys_scaled, avg, mx = net.apply_max_norm(limit)
    assert keys_scaled == over
    for m in net.all_modules():
        n = m.delta_weight().norm().item()
        want = min(before[m.name], limit)
        assert abs(n - want) <= 1e-4 * max(1.0, want), m.name
    assert abs(mx - limit) <= 1e-4 * max(1.0, limit)


# --- file size on SD1.5 shapes --------------------------------------------------------------------
def test_seed_lokr_config_file_size_on_sd15():
    unet, te = sd15_meta()
    net = create_network(cfg(network_type="lokr", network_dim=1024, network_alpha=1024, conv_dim=512,
                             conv_alpha=512), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (278, 72)
    mods = net.all_modules()
    assert all(m.full_w2 and m.full_w1 for m in mods)  # rank far above every factor: full matrices
    tensors = {f"{m.name}.{k}": v for m in mods for k, v in m.tensors_to_save().items()}
    data = sum(v.numel() * (4 if k.endswith(".alpha") else 2) for k, v in tensors.items())  # fp16, alpha fp32
    header = sum(len(k) + 60 for k in tensors)  # JSON: name, dtype, shape, offsets
    size = data + header
    assert 1_000_000 <= size <= 3_000_000, size
    q = net.unet_modules["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    assert {k: tuple(v.shape) for k, v in q.tensors_to_save().items()} == \
        {"lokr_w1": (16, 16), "lokr_w2": (20, 20), "alpha": ()}
    c = net.unet_modules["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert tuple(c.lokr_w2.shape) == (20, 20, 3, 3) and c.scale == 1.0 and float(c.alpha) == 512


def test_loha_network_defaults_and_counts():
    unet, te = sd15_meta()
    net = create_network(cfg(network_type="loha", network_dim=8, network_alpha=4), unet, te)
    assert (len(net.unet_modules), len(net.text_encoder_modules)) == (278, 72)
    c = net.unet_modules["lora_unet_up_blocks_1_resnets_0_conv1"]
    assert isinstance(c, AdapterModule) and (c.dim, float(c.alpha)) == (8, 4.0)  # conv_dim/alpha default
    assert tuple(c.hada_w1_b.shape) == (8, 2560 * 9)


def test_loha_saves_only_its_factors_for_backward():
    # delta W = (a1 @ b1) * (a2 @ b2) * scale through HadamardProduct: the same values and gradients
    # as autograd's graph of the expression, which also saves both full-size halves (8 bytes per
    # weight element in float32); HadamardProduct saves the four factors and recomputes the halves
    from lorakit.adapters.loha import HadamardProduct

    g = torch.Generator().manual_seed(0)
    a1, b1, a2, b2 = (torch.randn(s, generator=g, requires_grad=True) for s in ((64, 4), (4, 96), (64, 4), (4, 96)))
    up = torch.randn(64, 96, generator=g)

    def saved_bytes(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        grads = torch.autograd.grad((out * up).sum(), (a1, b1, a2, b2))
        return out, grads, sum(seen.values())

    ref, ref_grads, ref_bytes = saved_bytes(lambda: (a1 @ b1) * (a2 @ b2) * 0.5)
    out, grads, n_bytes = saved_bytes(lambda: HadamardProduct.apply(a1, b1, a2, b2, 0.5))
    assert torch.equal(out, ref)
    for x, y in zip(grads, ref_grads):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
    assert n_bytes == 2 * (64 * 4 + 4 * 96) * 4  # the four factors, float32
    assert ref_bytes >= n_bytes + 2 * 64 * 96 * 4  # and both halves


@pytest.mark.parametrize("layer", ["linear", "conv"])
@pytest.mark.parametrize("autocast", [False, True])
def test_loha_fused_merged_weight_equals_delta_then_sum(layer, autocast):
    # W + scale * multiplier * (a1 @ b1) * (a2 @ b2) in one addcmul (HadamardMerged) against building
    # delta W and adding it (the form with dropouts or DoRA): same output and factor gradients
    torch.manual_seed(0)
    org = nn.Linear(48, 40) if layer == "linear" else nn.Conv2d(12, 16, 3, padding=1)
    org.requires_grad_(False)
    m = LoHaModule("x", org, 4, 2.0, multiplier=0.7).apply()
    with torch.no_grad():
        m.hada_w2_a.normal_(0, 0.1)
    x = torch.randn(2, 5, 48) if layer == "linear" else torch.randn(2, 12, 8, 8)
    up = torch.randn_like(org(x) if not autocast else org(x).float())
    dtype = torch.bfloat16

    def run(fused: bool):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            if autocast:
                org.to(dtype)
            assert m.fused_weight() is not None  # the weight's dtype is the matmuls' (autocast's) dtype
            out = m.merged(x) if fused else m.merged_call(x, m.training_delta)
            org.float()
        (out.float() * up).sum().backward()
        return out.float(), [p.grad.clone() for p in (m.hada_w1_a, m.hada_w1_b, m.hada_w2_a, m.hada_w2_b)]

    ref, ref_grads = run(fused=False)
    out, grads = run(fused=True)
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out, ref, **tol)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, **tol)
    m.dropout = 0.5  # while a dropout acts the two-step form runs (its mask is on delta W)
    m.train()

    def refuse():
        raise AssertionError("fused while a dropout acts")
    m.fused_weight = refuse
    assert m.dropouts_active() and m.merged(x).shape == ref.shape


def test_loha_fused_merged_weight_saves_only_the_factors():
    from lorakit.adapters.loha import HadamardMerged

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 96, generator=g)
    a1, b1, a2, b2 = (torch.randn(s, generator=g, requires_grad=True) for s in ((64, 4), (4, 96), (64, 4), (4, 96)))
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = HadamardMerged.apply(w, a1, b1, a2, b2, 0.5)
    assert sum(seen.values()) == 2 * (64 * 4 + 4 * 96) * 4  # not W, not the two full-size halves
    torch.testing.assert_close(out, w + (a1 @ b1) * (a2 @ b2) * 0.5)
