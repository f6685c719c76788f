"""Max-norm's batched norms (lorakit/adapters/frobenius.py): each equals ||delta_weight()||, and the
work per step grows with the distinct factor shapes, not with the number of modules."""
from __future__ import annotations

import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adapters_helpers import cfg, sd15_meta, tiny_models
from lorakit.adapters.frobenius import FrobeniusNorms, LowRank, _low_rank_squares
from lorakit.adapters.network import create_network

NETS = {  # name -> (network settings, modules measured from their factors, not from delta_weight)
    "lora": (dict(network_dim=4, network_alpha=2.0, conv_dim=3, conv_alpha=1.5), "all"),
    "locon-dora": (dict(network_type="locon", network_dim=4, network_alpha=1.0, conv_dim=2,
                        network_args={"dora_wd": True}), "all"),
    "locon-tucker": (dict(network_type="locon", network_dim=4, conv_dim=3, network_args={"use_tucker": True}),
                     "some"),  # the 3x3 Tucker convs are built
    "dylora": (dict(network_type="dylora", network_dim=4, network_alpha=4.0, network_args={"unit": 2}), "all"),
    "lokr": (dict(network_type="lokr", network_dim=2, network_alpha=3.0, conv_dim=2, conv_alpha=0.5), "all"),
    "lokr-both-tucker": (dict(network_type="lokr", network_dim=2, network_alpha=3.0, conv_dim=2, conv_alpha=0.5,
                              network_args={"decompose_both": True, "use_tucker": True, "factor": 8}), "all"),
    "lokr-full": (dict(network_type="lokr", network_dim=8, network_alpha=3.0, conv_dim=8), "all"),
    "ia3": (dict(network_type="ia3"), "all"),
    "ia3-input": (dict(network_type="ia3", network_args={"train_on_input": True}), "all"),
    "loha": (dict(network_type="loha", network_dim=4, conv_dim=3), "none"),
}


def random_net(settings: dict, seed: int = 1):
    unet, te = tiny_models()
    with torch.no_grad():  # the base weights are random already; iA3 scales them
        for p in list(unet.parameters()) + list(te.parameters()):
            p.mul_(1.5)
    net = create_network(cfg(**settings), unet, te)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.is_floating_point() and p.dim() > 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net


@pytest.mark.parametrize("name", list(NETS))
def test_each_norm_equals_the_built_delta(name):
    settings, factored = NETS[name]
    net = random_net(settings)
    mods = net.all_modules()
    with torch.no_grad():
        want = torch.stack([m.delta_weight().float().norm() for m in mods])
    got = FrobeniusNorms()(mods)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, rtol=2e-5, atol=1e-6), (got - want).abs().max()
    own = sum(m.norm_factors() is not None for m in mods)
    assert {"all": own == len(mods), "some": 0 < own < len(mods), "none": own == 0}[factored], own


def test_low_rank_squares_both_forms():
    g = torch.Generator().manual_seed(0)
    for out, r, inp in ((6, 2, 5), (3, 4, 2)):  # the Gram form, and the rank above the layer: the product
        fs = [LowRank(torch.randn(out, r, generator=g), torch.randn(r, inp, generator=g)) for _ in range(3)]
        want = torch.stack([(f.up @ f.down).square().sum() for f in fs])
        assert torch.allclose(_low_rank_squares(fs), want, rtol=1e-5)
    zero = [LowRank(torch.zeros(6, 2), torch.randn(2, 5, generator=g))]  # a fresh LoRA: up = 0
    assert _low_rank_squares(zero).item() == 0.0


class Ops(TorchDispatchMode):
    """The aten ops of a call that launch a kernel on a GPU (views excluded), and its largest output."""

    def __init__(self):
        super().__init__()
        self.count, self.largest = collections.Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not (func.is_view or func.overloadpacket.__name__ == "_unsafe_view"):
            self.count[func.overloadpacket.__name__] += 1
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("settings", [dict(network_dim=8, conv_dim=8),
                                      dict(network_type="lokr", network_dim=1024, network_alpha=1024, conv_dim=512,
                                           conv_alpha=512),  # the second seed guide's LoKr: full factors
                                      dict(network_type="ia3")], ids=["lora", "lokr-seed", "ia3"])
def test_sd15_step_takes_ops_per_shape_not_per_module(settings):
    unet, te = sd15_meta()
    net = create_network(cfg(**settings), unet, te)
    mods = net.all_modules()
    norms = FrobeniusNorms()
    norms(mods)  # iA3: the first call takes the frozen weights' channel norms
    with Ops() as ops:
        out = norms(mods)
    with Ops() as built:  # what max-norm did before: each module's delta W, then its norm
        for m in mods[:20]:
            m.delta_weight().float().norm()
    n_ops = sum(ops.count.values())
    per_module_before = sum(built.count.values()) / 20
    shapes = {(tuple(f.up.shape), tuple(f.down.shape)) for m in mods for f in m.norm_factors()[1]
              if isinstance(f, LowRank)}
    assert out.shape == (len(mods),)
    assert per_module_before >= 2
    # SD1.5, 116-350 modules: 7 ops per distinct low-rank shape (36 for LoRA), one foreach norm for
    # all full and channel-scaled factors, and 6 to gather the module norms
    assert n_ops <= 7 * len(shapes) + 10, (n_ops, len(shapes), ops.count)
    assert n_ops < len(mods) <= per_module_before * len(mods) / 2
    largest_weight = max(m.org.weight.numel() for m in mods)
    if settings.get("network_type") != "lokr":  # LoKr's full factors are stacked as they are, no product
        assert ops.largest < largest_weight / 8, (ops.largest, largest_weight)


def test_ia3_base_norms_kept_until_the_base_changes():
    net = random_net(NETS["ia3"][0])
    mods = net.all_modules()
    norms = FrobeniusNorms()
    first = norms(mods)
    with Ops() as again:
        assert torch.equal(norms(mods), first)
    assert "linalg_vector_norm" not in again.count  # the base norms were kept
    with torch.no_grad():
        mods[0].org.weight.mul_(2.0)  # in place: its version changes
    assert torch.allclose(norms(mods)[0], 2 * first[0], rtol=1e-6)
    assert torch.allclose(norms(mods)[1:], first[1:])
