"""lorakit's foreach Prodigy / D-Adaptation equal the reference packages step for step."""
from __future__ import annotations

import copy

import dadaptation
import dadaptation.experimental
import prodigyopt
import pytest
import torch

from lorakit.config.load import load_config
from lorakit.optim import fast_dadapt, fast_prodigy
from lorakit.optim.groupscale import scaled_class
from lorakit.optim.optimizers import build_optimizer, describe_optimizer, resolve_optimizer

# 20 tensors: 1-D, 2-D (LoRA down/up-like) and 4-D conv-like; every 4th starts at zero (p0 = 0-dim)
SHAPES = [(16,), (8, 32), (32, 8), (8, 4, 3, 3), (4, 8, 1, 1), (5,), (3, 7), (7, 3), (6, 6, 3, 3), (12,)] * 2


def toy(dtype):
    g = torch.Generator().manual_seed(0)
    ps = [torch.randn(*s, generator=g) * 0.5 * (i % 4 != 1) for i, s in enumerate(SHAPES)]
    targets = [torch.randn(*s, generator=g) for s in SHAPES]
    weights = [torch.rand(*s, generator=g) + 0.5 for s in SHAPES]
    return [[t.to(dtype) for t in x] for x in (ps, targets, weights)]


def make(cls, dtype, kw):
    p0, targets, weights = toy(dtype)
    ps = [p.clone().requires_grad_(True) for p in p0]
    opt = cls([{"params": ps[:8]}, {"params": ps[8:]}], lr=1.0, **kw)
    return opt, ps, (p0, targets, weights)


def train(opt, ps, data, steps, start=0):
    _, targets, weights = data
    ds = []
    for s in range(start, start + steps):
        opt.zero_grad()
        # a weighted quadratic whose tilt changes with the step, so gradients never settle
        loss = sum((w * (p - t) ** 2).sum() + ((s % 7) - 3) * p.sum() for p, t, w in zip(ps, targets, weights))
        loss.backward()
        opt.step()
        ds.append(float(opt.param_groups[0]["d"]))
    return ds


def compare(ref_cls, fast_cls, kw, dtype, steps=200):
    ref, a, data = make(ref_cls, dtype, kw)
    fast, b, _ = make(fast_cls, dtype, kw)
    da, db = train(ref, a, data, steps), train(fast, b, data, steps)
    p_diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    d_diff = max(abs(x - y) for x, y in zip(da, db))
    moved = max((x - y).abs().max().item() for x, y in zip(a, data[0]))
    return p_diff, d_diff, moved, da, db


SEED_GUIDE = {"betas": (0.9, 0.99), "d0": 1e-3, "d_coef": 1.0, "weight_decay": 0.0,
              "safeguard_warmup": False, "use_bias_correction": False}
README_DIFFUSION = {"safeguard_warmup": True, "use_bias_correction": True, "weight_decay": 0.01}


@pytest.mark.parametrize("kw", [{}, SEED_GUIDE, README_DIFFUSION, {"weight_decay": 0.01, "decouple": False}],
                         ids=["defaults", "seed_guide", "readme_diffusion", "coupled_decay"])
def test_prodigy_float32_equals_reference_200_steps(kw):
    p_diff, d_diff, moved, da, _ = compare(prodigyopt.Prodigy, fast_prodigy.Prodigy, kw, torch.float32)
    assert p_diff <= 1e-6
    assert d_diff <= 1e-6
    assert moved > 1.0 and da[-1] > 100 * da[0]  # it trains and d adapts


# float64: rounding out of the way, every option must agree to ~1e-12
@pytest.mark.parametrize("ref_cls,fast_cls,kw", [
    (prodigyopt.Prodigy, fast_prodigy.Prodigy, {"betas": (0.0, 0.99), "d0": 1e-3}),
    (prodigyopt.Prodigy, fast_prodigy.Prodigy, {"slice_p": 3, "d0": 1e-4, "growth_rate": 1.02, "beta3": 0.9,
                                                "eps": 1e-6, "d_coef": 0.5}),
    (prodigyopt.Prodigy, fast_prodigy.Prodigy, {**README_DIFFUSION, "decouple": False}),
    (dadaptation.DAdaptAdam, fast_dadapt.DAdaptAdam, {}),
    (dadaptation.DAdaptAdam, fast_dadapt.DAdaptAdam, {"decouple": True, "weight_decay": 0.01}),
    (dadaptation.DAdaptAdam, fast_dadapt.DAdaptAdam, {"weight_decay": 0.01, "use_bias_correction": True,
                                                      "betas": (0.9, 0.99), "growth_rate": 1.05}),
    (dadaptation.experimental.DAdaptAdamPreprint, fast_dadapt.DAdaptAdamPreprint, {}),
    (dadaptation.experimental.DAdaptAdamPreprint, fast_dadapt.DAdaptAdamPreprint,
     {"decouple": True, "weight_decay": 0.01, "betas": (0.9, 0.99)}),
    (dadaptation.DAdaptLion, fast_dadapt.DAdaptLion, {}),
    (dadaptation.DAdaptLion, fast_dadapt.DAdaptLion, {"weight_decay": 0.01, "d0": 1e-4}),
])
def test_float64_equals_reference_200_steps(ref_cls, fast_cls, kw):
    p_diff, d_diff, moved, da, _ = compare(ref_cls, fast_cls, kw, torch.float64)
    tol = 1e-9 if kw.get("betas", (0.9,))[0] > 0 else 1e-6  # beta1=0: sign-like steps amplify rounding
    assert p_diff <= tol
    assert d_diff <= 1e-12 * max(da)
    assert moved > 0.1 and da[-1] > 10 * da[0]


@pytest.mark.parametrize("ref_cls,fast_cls,kw", [
    (prodigyopt.Prodigy, fast_prodigy.Prodigy, README_DIFFUSION),
    (dadaptation.DAdaptAdam, fast_dadapt.DAdaptAdam, {"use_bias_correction": True}),
    (dadaptation.experimental.DAdaptAdamPreprint, fast_dadapt.DAdaptAdamPreprint, {}),
    (dadaptation.DAdaptLion, fast_dadapt.DAdaptLion, {}),
])
def test_state_dict_round_trip_mid_run(ref_cls, fast_cls, kw):
    dtype = torch.float64
    ref, a, data = make(ref_cls, dtype, kw)
    fast, b, _ = make(fast_cls, dtype, kw)
    train(ref, a, data, 60)
    train(fast, b, data, 60)
    saved = copy.deepcopy(fast.state_dict())
    assert torch.is_tensor(saved["param_groups"][0]["d"]) and saved["param_groups"][0]["d"].dim() == 0
    assert set(ref.state_dict()["state"][0]) == set(saved["state"][0])  # same per-parameter keys
    # a fresh optimizer over fresh parameters holding the same values, as after a resume
    fast2, b2, _ = make(fast_cls, dtype, kw)
    with torch.no_grad():
        for x, y in zip(b2, b):
            x.copy_(y)
    fast2.load_state_dict(saved)
    da = train(ref, a, data, 60, start=60)
    db = train(fast2, b2, data, 60, start=60)
    assert max((x - y).abs().max().item() for x, y in zip(a, b2)) <= 1e-9
    assert max(abs(x - y) for x, y in zip(da, db)) <= 1e-12 * max(da)
    # a reference state_dict (Python floats in the groups) loads into the fast class too
    fast3, b3, _ = make(fast_cls, dtype, kw)
    with torch.no_grad():
        for x, y in zip(b3, a):
            x.copy_(y)
    fast3.load_state_dict(copy.deepcopy(ref.state_dict()))
    da = train(ref, a, data, 20, start=120)
    db = train(fast3, b3, data, 20, start=120)
    assert max((x - y).abs().max().item() for x, y in zip(a, b3)) <= 1e-9
    assert max(abs(x - y) for x, y in zip(da, db)) <= 1e-12 * max(da)


def test_no_host_read_per_parameter(monkeypatch):
    opt, ps, data = make(fast_prodigy.Prodigy, torch.float32, README_DIFFUSION)
    train(opt, ps, data, 1)  # the first step reads which parameters start at zero (once per batch)
    calls = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=orig, _n=name: (calls.append(_n), _o(self, *a))[1])
    opt.zero_grad()
    sum((p ** 2).sum() for p in ps).backward()
    opt.step()
    monkeypatch.undo()
    assert calls == []


def test_all_zero_gradients_leave_d_and_params_like_reference():
    for ref_cls, fast_cls in [(prodigyopt.Prodigy, fast_prodigy.Prodigy), (dadaptation.DAdaptAdam, fast_dadapt.DAdaptAdam)]:
        ref, a, data = make(ref_cls, torch.float64, {"use_bias_correction": True})
        fast, b, _ = make(fast_cls, torch.float64, {"use_bias_correction": True})
        for opt, ps in ((ref, a), (fast, b)):
            for _ in range(2):  # two steps with zero gradients: the reference returns early
                for p in ps:
                    p.grad = torch.zeros_like(p)
                opt.step()
        assert all(torch.equal(x, y) for x, y in zip(a, b))
        assert float(fast.param_groups[0]["d"]) == ref.param_groups[0]["d"] == 1e-6
        assert float(fast.param_groups[0]["k"]) == ref.param_groups[0]["k"] == 0
        da, db = train(ref, a, data, 30), train(fast, b, data, 30)
        assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 1e-9
        assert max(abs(x - y) for x, y in zip(da, db)) <= 1e-12 * max(da)


def test_scaled_class_wraps_fast_prodigy():
    # different lrs: the fast class under GroupScaleMixin equals the scaled reference
    outs = []
    for base in (prodigyopt.Prodigy, fast_prodigy.Prodigy):
        p0, targets, weights = toy(torch.float64)
        ps = [p.clone().requires_grad_(True) for p in p0]
        opt = scaled_class(base)([{"params": ps[:8], "lr": 0.5}, {"params": ps[8:], "lr": 1.0}], lr=1.0, d0=1e-3)
        ds = train(opt, ps, (p0, targets, weights), 50)
        assert [g["lr"] for g in opt.param_groups] == [0.5, 1.0]
        outs.append((ps, ds))
    (a, da), (b, db) = outs
    assert max((x - y).abs().max().item() for x, y in zip(a, b)) <= 1e-9
    assert max(abs(x - y) for x, y in zip(da, db)) <= 1e-12 * max(da)
    assert da[-1] > 10 * da[0]


def cfg_for(name, args=None):
    cfg = load_config(None, [f'optimizer_type="{name}"', "learning_rate=1.0"])
    return cfg.model_copy(update={"optimizer_args": args or {}})


@pytest.mark.parametrize("name,fast,ref", [
    ("Prodigy", fast_prodigy.Prodigy, prodigyopt.Prodigy),
    ("DAdaptAdam", fast_dadapt.DAdaptAdam, dadaptation.DAdaptAdam),
    ("DAdaptation", fast_dadapt.DAdaptAdamPreprint, dadaptation.experimental.DAdaptAdamPreprint),
    ("dadaptadampreprint", fast_dadapt.DAdaptAdamPreprint, dadaptation.experimental.DAdaptAdamPreprint),
    ("DAdaptLion", fast_dadapt.DAdaptLion, dadaptation.DAdaptLion),
])
def test_kohya_names_build_the_reference_class_fast_on_request(name, fast, ref):
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = build_optimizer(cfg_for(name, {"implementation": "fast"}),
                          [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 1.0}])
    assert type(opt) is fast and isinstance(opt, ref)
    opt = build_optimizer(cfg_for(name, {"implementation": "fast"}),
                          [{"params": [a], "lr": 0.5}, {"params": [b], "lr": 1.0}])
    assert isinstance(opt, fast) and type(opt) is not fast  # groupscale wraps the fast class
    opt = build_optimizer(cfg_for(name), [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 1.0}])
    assert type(opt) is ref  # the default until a GPU measurement shows the fast one pays
    assert resolve_optimizer(name)[0] is ref  # the reference still names it (ss_optimizer metadata)
    assert describe_optimizer(cfg_for(name)).startswith(f"{ref.__module__}.{ref.__name__}")


@pytest.mark.parametrize("cls", [fast_prodigy.Prodigy, fast_dadapt.DAdaptAdam, fast_dadapt.DAdaptAdamPreprint,
                                 fast_dadapt.DAdaptLion])
def test_foreach_optimizers_refuse_fsdp_and_complex(cls):
    """Sharded (FSDP) parameters and complex parameters would give wrong sums: refused, not trained."""
    with pytest.raises(NotImplementedError, match="FSDP"):
        cls([torch.zeros(3, requires_grad=True)], lr=1.0, fsdp_in_use=True)
    p = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = cls([p], lr=1.0)
    p.grad = torch.ones_like(p)
    with pytest.raises(NotImplementedError, match="complex"):
        opt.step()
    assert torch.equal(p.detach(), torch.zeros(3, dtype=torch.complex64))
