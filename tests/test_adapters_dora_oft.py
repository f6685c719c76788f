"""DoRA (dora_wd for LoCon/LoHa/LoKr) and Diag-OFT: LyCORIS 4.1.3 modules as an oracle, the formulas."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from adapters_helpers import assert_oft_matches_lycoris, cfg, seeded_oft, tiny_models
from lorakit.adapters.dora import column_norm
from lorakit.adapters.lokr import LoKrModule
from lorakit.adapters.loha import LoHaModule
from lorakit.adapters.lora import LoConModule
from lorakit.adapters.network import create_network
from lorakit.errors import ConfigError

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")

OURS = {"locon": LoConModule, "loha": LoHaModule, "lokr": LoKrModule}
LYCORIS = {"locon": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}


def layer(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    mod = nn.Linear(24, 16) if kind == "linear" else nn.Conv2d(8, 12, 3, padding=1)
    return mod.requires_grad_(False).eval()


def x_for(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 24, generator=g) if kind == "linear" else torch.randn(2, 8, 6, 6, generator=g)


def randomize(mod: nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            if name == "dora_scale":  # keep it near ||W||: a visible but realistic change
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def ours(algo: str, org: nn.Module, on_output: bool, dim: int = 4, alpha: float = 2.0):
    m = OURS[algo]("m", org, dim, alpha, args={"dora_wd": True, "wd_on_output": on_output})
    randomize(m)
    return m.eval()


# --- DoRA ------------------------------------------------------------------------------------
@pytest.mark.parametrize("on_output", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
def test_dora_matches_lycoris_module(algo, kind, on_output):
    lmods = pytest.importorskip("lycoris.modules")
    org = layer(kind)
    m = ours(algo, org, on_output)
    x = x_for(kind)
    base = org(x)
    m.apply()
    got = org(x)
    m.restore()
    ly_org = layer(kind)
    ly = getattr(lmods, LYCORIS[algo])("m", ly_org, 1.0, 4, 2.0, weight_decompose=True, wd_on_out=on_output)
    sd = dict(ly.named_parameters())  # its state_dict() holds computed copies (up * scalar)
    with torch.no_grad():
        for k, v in m.tensors_to_save().items():
            if k == "alpha":
                continue
            assert sd[k].shape == v.shape, k
            sd[k].copy_(v)
    ly.eval()
    ly.apply_to()
    want = ly_org(x)
    assert (got - base).abs().max() > 1e-2  # the adapter does change the layer
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()


def file_delta(t: dict[str, torch.Tensor], shape) -> torch.Tensor:
    """delta W of a LoCon/LoHa file, the loaders' formula (non-Tucker)."""
    if "lora_up.weight" in t:
        up, down = t["lora_up.weight"], t["lora_down.weight"]
        dw = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
        return dw.reshape(shape) * (float(t["alpha"]) / down.shape[0])
    w1 = t["hada_w1_a"] @ t["hada_w1_b"]
    w2 = t["hada_w2_a"] @ t["hada_w2_b"]
    return (w1 * w2).reshape(shape) * (float(t["alpha"]) / t["hada_w1_b"].shape[0])


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_dora_equals_the_formula_with_the_file_tensors(algo, kind):
    org = layer(kind)
    m = ours(algo, org, on_output=False)
    t = {k: v.detach().clone() for k, v in m.tensors_to_save().items()}
    w = org.weight
    m_shape = (1, w.shape[1]) + (1,) * (w.dim() - 2)
    assert t["dora_scale"].shape == m_shape  # the input-column form A1111 applies
    merged = w + file_delta(t, w.shape)
    # per input column: the norm over output rows and the kernel, written out by hand
    norm = torch.stack([merged[:, i].pow(2).sum().sqrt() for i in range(w.shape[1])]).reshape(m_shape)
    x = x_for(kind)
    for mult in (1.0, 0.5):
        new_w = w + mult * (t["dora_scale"] * merged / norm - w)
        want = m.op(x, new_w) + (org.bias.view(1, -1, 1, 1) if kind == "conv" else org.bias)
        m.multiplier = mult
        m.apply()
        got = org(x)
        m.restore()
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (mult, (got - want).abs().max())
        # merging gives the same weight
        w0 = w.clone()
        m.merge()
        assert torch.allclose(org.weight, new_w, atol=1e-5)
        org.weight.copy_(w0)


@pytest.mark.parametrize("algo", ["locon", "loha", "lokr"])
def test_fresh_dora_changes_nothing_and_magnitude_is_the_weight_norm(algo):
    org = layer("conv")
    m = OURS[algo]("m", org, 4, 2.0, args={"dora_wd": True})
    w = org.weight
    want = torch.stack([w[:, i].norm() for i in range(w.shape[1])]).view(1, -1, 1, 1)
    assert torch.allclose(m.dora_scale, want)
    x = x_for("conv")
    base = org(x)
    m.apply()
    assert torch.allclose(org(x), base, atol=1e-5)
    # the magnitude trains: its gradient reaches dora_scale
    m.train()
    org(x).square().sum().backward()
    assert m.dora_scale.grad is not None and m.dora_scale.grad.abs().sum() > 0
    m2 = OURS[algo]("m", layer("linear"), 4, 2.0, args={"dora_wd": True, "wd_on_output": True})
    assert m2.dora_scale.shape == (16, 1)
    assert torch.allclose(m2.dora_scale, column_norm(m2.org.weight, True))


def test_dora_network_file_round_trip_and_shape_guard(tmp_path):
    unet, te = tiny_models()
    c = cfg(network_type="loha", network_dim=4, network_alpha=2.0, network_args={"dora_wd": "True"})
    net = create_network(c, unet, te)
    assert net.network_args["dora_wd"] == "True" and net.network_args["wd_on_output"] == "False"
    mods = net.all_modules()
    assert all(hasattr(m, "dora_scale") for m in mods)
    randomize(mods[0])
    t = mods[0].tensors_to_save()
    assert set(t) == {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "dora_scale", "alpha"}
    # a row-form dora_scale of a square weight has the same size but means something else: refused
    sq = [m for m in mods if m.org.weight.shape[0] == m.org.weight.shape[1] and m.org.weight.dim() == 2][0]
    bad = {k: v.detach().clone() for k, v in sq.tensors_to_save().items()}
    bad["dora_scale"] = bad["dora_scale"].reshape(-1, 1)
    with pytest.raises(ConfigError) as e:
        sq.load_tensors(bad)
    assert "wd_on_output=True" in e.value.fix
    # a good file loads back exactly
    good = {k: v.detach().clone() * 1.5 for k, v in sq.tensors_to_save().items()}
    sq.load_tensors(good)
    assert torch.equal(sq.dora_scale, good["dora_scale"])


# --- Diag-OFT ----------------------------------------------------------------------------------
def oft(org: nn.Module, dim: int = 4, constraint: float = 0.0, rescaled: bool = False, seed: int = 2):
    from lorakit.adapters.oft import DiagOFTModule
    return seeded_oft(DiagOFTModule, org, dim, constraint, rescaled, seed)


@pytest.mark.parametrize("rescaled", [False, True])
@pytest.mark.parametrize("constraint", [0.0, 0.01])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_diag_oft_matches_lycoris_module(kind, constraint, rescaled):
    lmods = pytest.importorskip("lycoris.modules")
    org = layer(kind)
    m = oft(org, constraint=constraint, rescaled=rescaled)
    q = m.oft_blocks - m.oft_blocks.transpose(1, 2)
    if constraint:
        assert q.norm() > constraint * org.weight.shape[0]  # the constraint does clip here
    ly_org = layer(kind)
    ly = lmods.DiagOFTModule("m", ly_org, 1.0, 4, constraint=constraint, rescaled=rescaled)
    assert_oft_matches_lycoris(m, org, x_for(kind), ly_org, ly, constraint)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_diag_oft_equals_the_formula_and_rotates(kind):
    org = layer(kind)
    m = oft(org, constraint=0.0, rescaled=True)
    t = {k: v.detach().clone() for k, v in m.tensors_to_save().items()}
    w = org.weight
    n, bs, _ = t["oft_blocks"].shape
    assert n * bs == w.shape[0] and bs <= n
    new_w = torch.empty_like(w)
    eye = torch.eye(bs)
    for k in range(n):
        q = t["oft_blocks"][k] - t["oft_blocks"][k].T
        r = torch.linalg.solve((eye - q).T, (eye + q).T).T  # (I + Q)(I - Q)^-1
        assert torch.allclose(r @ r.T, eye, atol=1e-5)  # orthogonal
        rows = w[k * bs:(k + 1) * bs].reshape(bs, -1)
        new_w[k * bs:(k + 1) * bs] = (r.T @ rows).reshape(bs, *w.shape[1:])
    new_w = new_w * t["rescale"]
    x = x_for(kind)
    bias = org.bias.view(1, -1, 1, 1) if kind == "conv" else org.bias
    for mult in (1.0, 0.5):
        m.multiplier = mult
        m.apply()
        got = org(x)
        m.restore()
        want = m.op(x, w + mult * (new_w - w)) + bias
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (mult, (got - want).abs().max())
    # without rescale, the rotation keeps every column's norm within a block
    m2 = oft(layer(kind), rescaled=False)
    w2 = m2.org.weight + m2.delta_weight()
    for k in range(m2.block_num):
        sl = slice(k * m2.block_size, (k + 1) * m2.block_size)
        assert torch.allclose(w2[sl].norm(dim=0), m2.org.weight[sl].norm(dim=0), atol=1e-5)


def test_diag_oft_network_args_file_and_fresh_adapter(tmp_path):
    unet, te = tiny_models()
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 77, 32)
    with torch.no_grad():
        base = unet(x, 10, ctx).sample
    c = cfg(network_type="diag-oft", network_dim=4, network_alpha=2.0,
            network_args={"constraint": "0.001", "rescaled": "True", "use_tucker": "False"})
    net = create_network(c, unet, te)
    assert net.network_args["algo"] == "diag-oft"
    assert net.network_args["constraint"] == "0.001" and net.network_args["rescaled"] == "True"
    mods = net.all_modules()
    assert any(m.kind == "conv3x3" for m in mods)  # LyCORIS defaults: 3x3 convs adapted too
    net.apply()
    with torch.no_grad():
        assert torch.allclose(unet(x, 10, ctx).sample, base, atol=1e-5)  # B = 0 is R = I
    m = mods[0]
    t = m.tensors_to_save()
    assert set(t) == {"oft_blocks", "rescale", "alpha"} and t["oft_blocks"].dim() == 3
    assert float(t["alpha"]) == pytest.approx(0.001)
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_type="diag-oft", network_args={"constrain": "1"}), *tiny_models())
    assert "did you mean 'constraint'" in e.value.fix
    # a file without alpha means no constraint
    other = oft(layer("linear"), constraint=0.5)
    other.load_tensors({"oft_blocks": torch.zeros_like(other.oft_blocks)})
    assert float(other.alpha) == 0.0 and other.constraint == 0.0
