"""BOFT: LyCORIS 4.1.3's ButterflyOFTModule as an oracle, the butterfly product by hand, the network."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from adapters_helpers import assert_oft_matches_lycoris, cfg, seeded_oft, tiny_models
from lorakit.adapters.boft import BOFTModule, power2_split
from lorakit.adapters.network import create_network
from lorakit.errors import ConfigError

os.environ.setdefault("LYCORIS_KERNEL_BACKEND", "torch")
torch.set_num_threads(1)

DIM = {"linear": 4, "conv": 6}  # linear 16 = 4 * 4 (3 stages); conv 24 = 6 * 4 (block size not a power of 2)


def layer(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    mod = nn.Linear(24, 16) if kind == "linear" else nn.Conv2d(6, 24, 3, padding=1)
    return mod.requires_grad_(False).eval()


def x_for(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 24, generator=g) if kind == "linear" else torch.randn(2, 6, 5, 5, generator=g)


def boft(org: nn.Module, dim: int, constraint: float = 0.0, rescaled: bool = False, seed: int = 2) -> BOFTModule:
    return seeded_oft(BOFTModule, org, dim, constraint, rescaled, seed)


@pytest.mark.parametrize("rescaled", [False, True])
@pytest.mark.parametrize("constraint", [0.0, 0.01])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_boft_matches_lycoris_module(kind, constraint, rescaled):
    lmods = pytest.importorskip("lycoris.modules")
    org = layer(kind)
    m = boft(org, DIM[kind], constraint=constraint, rescaled=rescaled)
    assert m.oft_blocks.shape == ((3, 4, 4, 4) if kind == "linear" else (3, 4, 6, 6))
    q = m.oft_blocks - m.oft_blocks.transpose(-1, -2)
    if constraint:
        assert q.norm() > constraint * org.weight.shape[0]  # the constraint does clip here
    x = x_for(kind)
    ly_org = layer(kind)
    ly = lmods.ButterflyOFTModule("m", ly_org, 1.0, DIM[kind], constraint=constraint, rescaled=rescaled)
    got = assert_oft_matches_lycoris(m, org, x, ly_org, ly, constraint)
    # LyCORIS rebuilds a module from our saved tensors alone (as a loader would) and agrees
    t = {k: v.detach().clone() for k, v in m.tensors_to_save().items()}
    ly2_org = layer(kind)
    with torch.no_grad():
        ly2 = lmods.ButterflyOFTModule.make_module_from_state_dict("m", ly2_org, t["oft_blocks"],
                                                                   t.get("rescale"), t["alpha"])
    ly2.eval()
    ly2.apply_to()
    assert torch.allclose(ly2_org(x), got, atol=1e-5, rtol=0)


def stage_matrix(r: torch.Tensor, i: int, b: int, out: int) -> torch.Tensor:
    """Stage i as an out x out matrix, written out row by row: rows 2^i*b/2 apart are paired."""
    k = (2 ** i) * (b // 2)
    rows = []  # the source row at each position of the permuted order
    for c in range(out // (2 * k)):
        for j in range(k):
            rows += [c * 2 * k + j, c * 2 * k + k + j]
    s = torch.zeros(out, out)
    for pos_a, src_a in enumerate(rows):
        blk, ia = divmod(pos_a, b)
        for ib in range(b):
            s[src_a, rows[blk * b + ib]] = r[blk, ia, ib]
    return s


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_boft_equals_the_butterfly_formula_and_rotates(kind):
    org = layer(kind)
    m = boft(org, DIM[kind], rescaled=True)
    t = {k: v.detach().clone() for k, v in m.tensors_to_save().items()}
    w = org.weight
    out = w.shape[0]
    stages, n, b, _ = t["oft_blocks"].shape
    assert n * b == out and n & (n - 1) == 0 and stages == n.bit_length()
    eye = torch.eye(b)
    o = torch.eye(out)
    for i in range(stages):
        r = torch.empty(n, b, b)
        for blk in range(n):
            q = t["oft_blocks"][i, blk] - t["oft_blocks"][i, blk].T
            r[blk] = (eye + q) @ torch.linalg.inv(eye - q)
            assert torch.allclose(r[blk] @ r[blk].T, eye, atol=1e-5)  # each block orthogonal
        o = stage_matrix(r, i, b, out) @ o
    assert torch.allclose(o @ o.T, torch.eye(out), atol=1e-5)  # the product too
    assert (o - torch.eye(out)).abs().max() > 0.1
    # every output row mixes with every other one after all the stages (full butterfly)
    assert (o.abs() > 1e-6).all()
    new_w = (o @ w.reshape(out, -1)).reshape(w.shape) * t["rescale"]
    x = x_for(kind)
    bias = org.bias.view(1, -1, 1, 1) if kind == "conv" else org.bias
    for mult in (1.0, 0.5):
        m.multiplier = mult
        m.apply()
        got = org(x)
        m.restore()
        want = m.op(x, w + mult * (new_w - w)) + bias
        assert torch.allclose(got, want, atol=1e-5, rtol=0), (mult, (got - want).abs().max())
    # without rescale the rotation keeps the norm of every input column
    m2 = boft(layer(kind), DIM[kind], rescaled=False)
    w2 = m2.org.weight + m2.delta_weight()
    assert torch.allclose(w2.norm(dim=0), m2.org.weight.norm(dim=0), atol=1e-5)
    # the rotation of the module itself is orthogonal
    eye_out = torch.eye(out)
    o2 = m2.rotate(eye_out)
    assert torch.allclose(o2 @ o2.T, eye_out, atol=1e-5)


def test_boft_factorization_and_fresh_module():
    assert power2_split(320, 4) is None and power2_split(320, 16) == (10, 32)
    assert power2_split(768, 8) == (6, 128) and power2_split(1280, 16) == (10, 128)
    org = layer("conv")
    m = BOFTModule("m", org, 6, None, args={"rescaled": True})
    assert m.oft_blocks.abs().sum() == 0 and torch.equal(m.rescale, torch.ones(24, 1, 1, 1))
    x = x_for("conv")
    base = org(x)
    m.apply()
    assert torch.equal(m.delta_weight(), torch.zeros_like(org.weight))
    assert torch.allclose(org(x), base, atol=1e-6)
    m.train()
    org.train()
    org(x).square().sum().backward()  # the gradient reaches oft_blocks at B = 0
    assert m.oft_blocks.grad is not None and m.oft_blocks.grad.abs().sum() > 0
    with pytest.raises(ConfigError) as e:
        BOFTModule("odd", nn.Linear(4, 320), 4, None)
    assert e.value.key == "network_dim" and "at least 10" in e.value.fix


def test_boft_network_names_args_file_round_trip(tmp_path):
    unet, te = tiny_models()
    x = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 77, 32)
    with torch.no_grad():
        base = unet(x, 10, ctx).sample
    c = cfg(network_type="boft", network_dim=4, network_alpha=2.0, network_train_unet_only=True,
            network_args={"constraint": "0.001", "rescaled": "True", "use_tucker": "False"})
    net = create_network(c, unet, te)
    assert net.network_args == {"algo": "boft", "conv_dim": "4", "conv_alpha": "2", "constraint": "0.001",
                                "rescaled": "True", "use_tucker": "False"}
    mods = net.all_modules()
    assert any(m.kind == "conv3x3" for m in mods)  # LyCORIS defaults: 3x3 convs adapted too
    # the same targets and names as Diag-OFT (the LyCORIS kohya names)
    ref = create_network(cfg(network_type="diag-oft", network_train_unet_only=True), *tiny_models())
    assert [m.name for m in mods] == [m.name for m in ref.all_modules()]
    sd = net.state_dict_to_save()
    assert set(sd) == {f"{m.name}.{k}" for m in mods for k in ("oft_blocks", "rescale", "alpha")}
    for m in mods:
        out = m.org.weight.shape[0]
        blocks = sd[f"{m.name}.oft_blocks"]
        assert blocks.dim() == 4 and blocks.shape[1] * blocks.shape[2] == out
        assert blocks.shape[0] == blocks.shape[1].bit_length() and blocks.shape[2] <= 4
        assert sd[f"{m.name}.rescale"].shape == (out,) + (1,) * (m.org.weight.dim() - 1)
        assert float(sd[f"{m.name}.alpha"]) == pytest.approx(0.001)
    net.apply()
    with torch.no_grad():
        assert torch.allclose(unet(x, 10, ctx).sample, base, atol=1e-5)  # B = 0: a fresh adapter is a no-op
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in mods:
            m.oft_blocks.copy_(torch.randn(m.oft_blocks.shape, generator=g) * 0.05)
        changed = unet(x, 10, ctx).sample
    assert (changed - base).abs().max() > 1e-3
    saved = {k: v.detach().clone() for k, v in net.state_dict_to_save().items()}
    net.restore()
    unet2, te2 = tiny_models()
    net2 = create_network(c, unet2, te2)
    net2.load_weights(saved)
    net2.apply()
    with torch.no_grad():
        assert torch.allclose(unet2(x, 10, ctx).sample, changed, atol=1e-5)
    # the tiny CLIP's fc1 has 37 outputs: no BOFT split exists, said before training
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_type="boft", network_dim=4), *tiny_models())
    assert "37" in str(e.value) and "even" in e.value.fix
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_type="boft", network_args={"constrain": "1"}), *tiny_models())
    assert "did you mean 'constraint'" in e.value.fix
