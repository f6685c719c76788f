"""Optimizers: kohya names, equality with the reference packages, different TE/UNet lr with Prodigy/DAdapt."""
from __future__ import annotations

import dadaptation
import dadaptation.experimental
import prodigyopt
import pytest
import torch

from lorakit.config.load import load_config
from lorakit.errors import ConfigError
from lorakit.optim.lion import Lion
from lorakit.optim.optimizers import build_optimizer, describe_optimizer, optimizer_warnings, resolve_optimizer


def cfg_for(name, args=None, **kw):
    sets = [f"optimizer_type={name!r}".replace("'", '"')]
    sets += [f"{k}={v}" for k, v in kw.items()]
    cfg = load_config(None, sets)
    return cfg.model_copy(update={"optimizer_args": args or {}})


def toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    te = [torch.randn(6, 4, generator=g), torch.randn(4, generator=g)]
    unet = [torch.randn(5, 3, generator=g), torch.randn(3, 3, generator=g)]
    targets = [torch.randn_like(t, generator=g) for t in te + unet]
    return te, unet, targets


def params_of(te, unet):
    te = [t.clone().requires_grad_(True) for t in te]
    unet = [t.clone().requires_grad_(True) for t in unet]
    return te, unet


def loss_fn(params, targets, step):
    # a quadratic with a step-dependent tilt, so gradients keep changing
    return sum(((p - t) ** 2).sum() + 0.1 * (step % 7) * p.sum() for p, t in zip(params, targets))


def run(opt, params, targets, steps):
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(params, targets, s).backward()
        opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("name,ref,args", [
    ("Prodigy", prodigyopt.Prodigy, {"betas": (0.9, 0.99), "d0": 1e-3, "weight_decay": 0.01,
                                     "use_bias_correction": True, "safeguard_warmup": True}),
    ("prodigy", prodigyopt.Prodigy, {}),
    ("DAdaptAdam", dadaptation.DAdaptAdam, {"decouple": True, "weight_decay": 0.01}),
    ("DAdaptation", dadaptation.experimental.DAdaptAdamPreprint, {"betas": (0.9, 0.99)}),
    ("dadaptadampreprint", dadaptation.experimental.DAdaptAdamPreprint, {}),
    ("DAdaptLion", dadaptation.DAdaptLion, {"weight_decay": 0.01}),
])
def test_equal_lrs_match_reference_200_steps(name, ref, args):
    te0, unet0, targets = toy()
    te, unet = params_of(te0, unet0)
    cfg = cfg_for(name, args, learning_rate=1.0)
    ours = build_optimizer(cfg, [{"params": te, "lr": 1.0, "name": "textencoder"},
                                 {"params": unet, "lr": 1.0, "name": "unet"}])
    assert isinstance(ours, ref)
    a = run(ours, te + unet, targets, 200)
    te, unet = params_of(te0, unet0)
    theirs = ref([{"params": te, "lr": 1.0}, {"params": unet, "lr": 1.0}], lr=1.0, **args)
    b = run(theirs, te + unet, targets, 200)
    diff = max((x - y).abs().max().item() for x, y in zip(a, b))
    assert diff <= 1e-6
    moved = max((x - y).abs().max().item() for x, y in zip(a, te0 + unet0))
    assert moved > 1e-3  # the toy problem really trains
    assert ours.param_groups[0]["d"] == theirs.param_groups[0]["d"]


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam", "DAdaptation", "DAdaptLion"])
def test_different_te_unet_lr_step_ratio(name):
    # identical parameters and a linear loss with identical constant gradients in both groups:
    # the unscaled updates are then equal, so each step's change must be in ratio te_lr/unet_lr
    torch.manual_seed(0)
    w = torch.randn(8, 3, dtype=torch.float64)  # float64: measure the ratio, not rounding
    c = torch.randn(8, 3, dtype=torch.float64)
    te, unet = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    cfg = cfg_for(name, {}, learning_rate=1.0)
    opt = build_optimizer(cfg, [{"params": [te], "lr": 0.25, "name": "textencoder"},
                                {"params": [unet], "lr": 1.0, "name": "unet"}])
    ratios = []
    for _ in range(30):
        before_te, before_unet = te.detach().clone(), unet.detach().clone()
        opt.zero_grad()
        ((te * c).sum() + (unet * c).sum()).backward()
        opt.step()
        d_te = (te.detach() - before_te).norm().item()
        d_unet = (unet.detach() - before_unet).norm().item()
        if d_unet > 0:
            ratios.append(d_te / d_unet)
    assert len(ratios) >= 20
    assert max(abs(r - 0.25) for r in ratios) < 1e-5
    assert [g["lr"] for g in opt.param_groups] == [0.25, 1.0]  # restored after each step
    d = opt.param_groups[0]["d"]
    assert d > 1e-6  # d adapted
    assert opt.param_groups[1]["d"] == d  # one d for both groups (the loop's d*lr: tests/test_watch.py)


def test_prodigy_different_lrs_trains():
    te0, unet0, targets = toy(1)
    te, unet = params_of(te0, unet0)
    opt = build_optimizer(cfg_for("Prodigy", {"d0": 1e-3}, learning_rate=1.0),
                          [{"params": te, "lr": 0.5, "name": "textencoder"},
                           {"params": unet, "lr": 1.0, "name": "unet"}])
    first = loss_fn(te + unet, targets, 0).item()
    run(opt, te + unet, targets, 150)
    last = loss_fn(te + unet, targets, 0).item()
    assert last < 0.2 * first


@pytest.mark.parametrize("name,ref", [
    ("Prodigy", prodigyopt.Prodigy),
    ("DAdaptAdam", dadaptation.DAdaptAdam),
    ("DAdaptation", dadaptation.experimental.DAdaptAdamPreprint),
    ("DAdaptLion", dadaptation.DAdaptLion),
])
def test_different_lrs_equal_the_reference_with_the_slower_groups_increment_scaled(name, ref):
    """The rule (lorakit/optim/groupscale.py): the reference optimizer steps every group at the top lr,
    sharing one d, and a group at lr r * top keeps r times its increment. The oracle applies that by
    hand to the reference package, step by step, for 150 steps: parameters and d must follow it."""
    te0, unet0, targets = toy(1)
    te, unet = params_of(te0, unet0)
    ours = build_optimizer(cfg_for(name, {}, learning_rate=1.0),
                           [{"params": te, "lr": 0.5, "name": "textencoder"},
                            {"params": unet, "lr": 1.0, "name": "unet"}])
    te_r, unet_r = params_of(te0, unet0)
    theirs = ref([{"params": te_r, "lr": 1.0}, {"params": unet_r, "lr": 1.0}], lr=1.0)
    d0 = theirs.param_groups[0]["d"]
    for step in range(150):
        for opt, params in ((ours, te + unet), (theirs, te_r + unet_r)):
            opt.zero_grad(set_to_none=True)
            loss_fn(params, targets, step).backward()
        before = [p.detach().clone() for p in te_r]
        ours.step()
        theirs.step()
        with torch.no_grad():
            for p, b in zip(te_r, before):
                p.copy_(b + 0.5 * (p - b))
        assert ours.param_groups[0]["d"] == pytest.approx(theirs.param_groups[0]["d"], rel=1e-5), step
    for a, b in zip(te + unet, te_r + unet_r):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-5, atol=1e-6)
    assert theirs.param_groups[0]["d"] > 2 * d0  # d adapted, so its estimate is what is compared
    assert [g["lr"] for g in ours.param_groups] == [0.5, 1.0]


@pytest.mark.parametrize("name", ["DAdaptSGD", "DAdaptAdaGrad", "DAdaptAdan"])
def test_dual_averaging_dadapt_refuses_different_lrs(name):
    a, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ConfigError) as e:
        build_optimizer(cfg_for(name), [{"params": [a], "lr": 0.5}, {"params": [b], "lr": 1.0}])
    assert e.value.key == "text_encoder_lr"
    opt = build_optimizer(cfg_for(name), [{"params": [a], "lr": 1.0}, {"params": [b], "lr": 1.0}])
    assert [g["lr"] for g in opt.param_groups] == [1.0, 1.0]


def test_names_case_insensitive_and_paths():
    assert resolve_optimizer("adamw")[0] is torch.optim.AdamW
    assert resolve_optimizer("ADAMW")[0] is torch.optim.AdamW
    assert resolve_optimizer("Lion")[0] is Lion
    assert resolve_optimizer("RAdam")[0] is torch.optim.RAdam  # kohya: other names come from torch.optim
    assert resolve_optimizer("torch.optim.Adagrad")[0] is torch.optim.Adagrad
    assert resolve_optimizer("DAdaptation")[0] is dadaptation.experimental.DAdaptAdamPreprint
    with pytest.raises(ConfigError) as e:
        resolve_optimizer("AdamWW")
    assert e.value.key == "optimizer_type"
    with pytest.raises(ConfigError):
        resolve_optimizer("nosuchpkg.Opt")


def test_bitsandbytes_missing_or_cpu_is_a_config_error():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ConfigError) as e:
        build_optimizer(cfg_for("AdamW8bit"), [{"params": [p], "lr": 1e-4}])
    assert "bitsandbytes" in e.value.message


def test_sgdnesterov_and_adafactor_defaults():
    p = torch.zeros(3, requires_grad=True)
    opt = build_optimizer(cfg_for("SGDNesterov", learning_rate=0.1), [{"params": [p], "lr": 0.1}])
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9
    opt = build_optimizer(cfg_for("SGDNesterov", {"momentum": 0.5}), [{"params": [p], "lr": 0.1}])
    assert opt.param_groups[0]["momentum"] == 0.5
    opt = build_optimizer(cfg_for("Adafactor"), [{"params": [p], "lr": 1e-3}])
    assert opt.param_groups[0]["relative_step"] is True and opt.param_groups[0]["lr"] is None
    opt = build_optimizer(cfg_for("Adafactor", {"relative_step": False, "scale_parameter": False}),
                          [{"params": [p], "lr": 1e-3}])
    assert opt.param_groups[0]["lr"] == 1e-3


def test_lion_math():
    p = torch.tensor([1.0, -2.0], requires_grad=True)
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.2])
    opt.step()
    # p*(1 - 0.1*0.5) - 0.1*sign(0.1*g)
    torch.testing.assert_close(p.detach(), torch.tensor([0.95 - 0.1, -1.9 + 0.1]))
    torch.testing.assert_close(opt.state[p]["exp_avg"], torch.tensor([0.003, -0.002]))
    p.grad = torch.tensor([-0.01, -0.01])
    opt.step()  # c = 0.9*m + 0.1*g = [0.0017, -0.0028] -> sign [1, -1]
    torch.testing.assert_close(p.detach(), torch.tensor([0.85 * 0.95 - 0.1, -1.8 * 0.95 + 0.1]))


def test_warnings_and_description():
    groups = [{"params": [torch.zeros(1)], "lr": 1e-4}]
    assert "around 1.0" in optimizer_warnings(cfg_for("Prodigy"), groups)[0]
    assert optimizer_warnings(cfg_for("AdamW"), groups) == []
    assert describe_optimizer(cfg_for("Prodigy", {"d0": 1e-3})) == "prodigyopt.prodigy.Prodigy(d0=0.001)"
    assert describe_optimizer(cfg_for("SGDNesterov")) == "torch.optim.sgd.SGD(momentum=0.9,nesterov=True)"
