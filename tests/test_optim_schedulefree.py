"""Schedule-free optimizers: kohya names, train/eval modes, per-group lrs, warnings."""
from __future__ import annotations

import copy

import prodigyplus
import pytest
import schedulefree
import torch

from lorakit.config.load import load_config
from lorakit.optim.optimizers import (build_optimizer, describe_optimizer, eval_mode, in_train_mode,
                                      optimizer_warnings, resolve_optimizer, train_mode)

SF = ["AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree", "ProdigyPlusScheduleFree"]
LR = {"AdamWScheduleFree": 0.3, "RAdamScheduleFree": 0.3, "SGDScheduleFree": 0.05, "ProdigyPlusScheduleFree": 1.0}


def cfg_for(name, args=None, **kw):
    cfg = load_config(None, [f'optimizer_type="{name}"'] + [f"{k}={v!r}".replace("'", '"') for k, v in kw.items()])
    return cfg.model_copy(update={"optimizer_args": args or {}})


def toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    start = [torch.randn(6, 4, generator=g), torch.randn(4, generator=g), torch.randn(5, 3, generator=g)]
    targets = [2 * torch.randn(t.shape, generator=g) for t in start]
    return [t.clone().requires_grad_(True) for t in start], targets


def loss_fn(params, targets, step=0):
    return sum(((p - t) ** 2).sum() + 0.1 * (step % 7) * p.sum() for p, t in zip(params, targets))


def train(opt, params, targets, steps):
    for s in range(steps):
        opt.zero_grad(set_to_none=True)
        loss_fn(params, targets, s).backward()
        opt.step()


@pytest.mark.parametrize("name,cls", [
    ("AdamWScheduleFree", schedulefree.AdamWScheduleFree), ("adamwschedulefree", schedulefree.AdamWScheduleFree),
    ("RADAMSCHEDULEFREE", schedulefree.RAdamScheduleFree), ("SGDScheduleFree", schedulefree.SGDScheduleFree),
    ("ProdigyPlusScheduleFree", prodigyplus.ProdigyPlusScheduleFree),
    ("prodigyplusschedulefree", prodigyplus.ProdigyPlusScheduleFree),
    ("prodigyplus.ProdigyPlusScheduleFree", prodigyplus.ProdigyPlusScheduleFree),  # kohya's spelling
])
def test_kohya_names(name, cls):
    assert resolve_optimizer(name)[0] is cls
    p = torch.zeros(3, requires_grad=True)
    opt = build_optimizer(cfg_for(name, learning_rate=0.5), [{"params": [p], "lr": 0.5, "name": "unet"}])
    assert type(opt) is cls and opt.param_groups[0]["lr"] == 0.5
    assert in_train_mode(opt)  # built ready to step, as kohya does
    assert describe_optimizer(cfg_for(name)) == f"{cls.__module__}.{cls.__name__}"


@pytest.mark.parametrize("name", SF)
def test_toy_problem_trains(name):
    lr, args = LR[name], {"d0": 1e-3} if name.startswith("Prodigy") else {}
    params, targets = toy()
    opt = build_optimizer(cfg_for(name, args, learning_rate=lr), [{"params": params, "lr": lr, "name": "unet"}])
    first = loss_fn(params, targets).item()
    train(opt, params, targets, 200)
    with eval_mode(opt):  # the weights that would be saved
        last = loss_fn(params, targets).item()
    assert first > 200 and last < 0.02 * first, (first, last)  # measured 207 -> 1.0 to 2.7


@pytest.mark.parametrize("name", SF)
def test_eval_and_train_mode_switch_the_weights(name):
    params, targets = toy(1)
    lr = LR[name]
    opt = build_optimizer(cfg_for(name, {"d0": 1e-3} if lr == 1.0 else {}, learning_rate=lr),
                          [{"params": params, "lr": lr, "name": "unet"}])
    train(opt, params, targets, 30)
    y = [p.detach().clone() for p in params]
    z = [opt.state[p]["z"].clone() for p in params]
    beta1 = opt.param_groups[0]["momentum"] if name.startswith("SGD") else opt.param_groups[0]["betas"][0]
    with eval_mode(opt):
        assert not in_train_mode(opt)
        x = [p.detach().clone() for p in params]
        with eval_mode(opt):  # nested: stays in eval
            pass
        assert not in_train_mode(opt)
        torch.testing.assert_close(x, [p.detach() for p in params], rtol=0, atol=0)
    assert in_train_mode(opt)
    # y = beta1 x + (1 - beta1) z: eval() exposes x = (y - (1 - beta1) z) / beta1
    for xi, yi, zi in zip(x, y, z):
        torch.testing.assert_close(xi, (yi - (1 - beta1) * zi) / beta1, rtol=1e-5, atol=1e-5)
    moved = max((a - b).abs().max().item() for a, b in zip(x, y))
    assert moved > 1e-2  # measured 0.022 (RAdam) to 0.31: x really differs from the training iterate
    back = max((p.detach() - b).abs().max().item() for p, b in zip(params, y))
    assert back < 1e-5  # train mode restores the iterate (float32 rounding of two lerps)
    train_mode(opt)  # idempotent
    assert max((p.detach() - b).abs().max().item() for p, b in zip(params, y)) < 1e-5
    train(opt, params, targets, 1)  # still steps after the round trip


def test_modes_are_no_ops_for_adamw_and_see_through_accelerate():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    params, targets = toy(2)
    adamw = build_optimizer(cfg_for("AdamW", learning_rate=0.1), [{"params": params, "lr": 0.1, "name": "unet"}])
    train(adamw, params, targets, 5)
    before = [p.detach().clone() for p in params]
    with eval_mode(adamw):
        torch.testing.assert_close([p.detach() for p in params], before, rtol=0, atol=0)
    train_mode(adamw)
    torch.testing.assert_close([p.detach() for p in params], before, rtol=0, atol=0)
    try:
        acc = Accelerator(cpu=True)
        wrapped = acc.prepare(adamw)
        with eval_mode(wrapped):
            pass
        torch.testing.assert_close([p.detach() for p in params], before, rtol=0, atol=0)
        sf_params, _ = toy(2)
        sf = acc.prepare(build_optimizer(cfg_for("AdamWScheduleFree", learning_rate=0.1),
                                         [{"params": sf_params, "lr": 0.1, "name": "unet"}]))
        assert type(sf).__name__ == "AcceleratedOptimizer"
        train(sf, sf_params, targets, 5)
        y = [p.detach().clone() for p in sf_params]
        with eval_mode(sf):
            assert not sf.optimizer.param_groups[0]["train_mode"]
            assert max((p.detach() - b).abs().max().item() for p, b in zip(sf_params, y)) > 1e-3
        assert sf.optimizer.param_groups[0]["train_mode"]
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


def test_state_saved_in_eval_mode_resumes_exactly():
    # what the loop does: save weights and optimizer state inside eval_mode, load both, train_mode
    params, targets = toy(3)
    cfg = cfg_for("AdamWScheduleFree", learning_rate=0.05)
    opt = build_optimizer(cfg, [{"params": params, "lr": 0.05, "name": "unet"}])
    train(opt, params, targets, 10)
    with eval_mode(opt):
        saved_w = [p.detach().clone() for p in params]
        saved_s = copy.deepcopy(opt.state_dict())  # as if written to disk
    resumed = [w.clone().requires_grad_(True) for w in saved_w]
    opt2 = build_optimizer(cfg, [{"params": resumed, "lr": 0.05, "name": "unet"}])
    opt2.load_state_dict(saved_s)
    assert not in_train_mode(opt2)  # the state carries the mode it was saved in
    train_mode(opt2)
    train(opt, params, targets, 10)
    train(opt2, resumed, targets, 10)
    diff = max((a - b).abs().max().item() for a, b in zip(params, resumed))
    assert diff < 1e-5


def _steps(opt, te, unet, c, n):
    """Per-step |dz_te| / |dz_unet| and |dp_te| / |dp_unet| on a linear loss with equal gradients."""
    out = []
    for _ in range(n):
        z0 = [opt.state[p]["z"].clone() if "z" in opt.state[p] else p.detach().clone() for p in (te, unet)]
        p0 = [te.detach().clone(), unet.detach().clone()]
        d = [g.get("d", 1.0) for g in opt.param_groups]
        opt.zero_grad()
        ((te * c).sum() + (unet * c).sum()).backward()
        opt.step()
        dz = [(opt.state[p]["z"] - z).norm().item() for p, z in zip((te, unet), z0)]
        dp = [(p.detach() - b).norm().item() for p, b in zip((te, unet), p0)]
        out.append((dz[0] / dz[1], dp[0] / dp[1], d[0] / d[1]))
    return out


def _pair(seed=0):
    torch.manual_seed(seed)
    w, c = torch.randn(8, 3), torch.randn(8, 3)
    return w.clone().requires_grad_(True), w.clone().requires_grad_(True), c


def test_adamw_schedulefree_group_lrs_are_native():
    te, unet, c = _pair()
    opt = build_optimizer(cfg_for("AdamWScheduleFree", learning_rate=1e-2),
                          [{"params": [te], "lr": 5e-3, "name": "textencoder"},
                           {"params": [unet], "lr": 1e-2, "name": "unet"}])
    ratios = _steps(opt, te, unet, c, 30)
    assert max(abs(rz - 0.5) for rz, _, _ in ratios) < 1e-4
    assert max(abs(rp - 0.5) for _, rp, _ in ratios) < 1e-4


def test_prodigy_plus_one_shared_d_gives_the_lr_ratio():
    # split_groups=False: one d for all groups, step of group g = d * lr_g (the meaning Prodigy has in lorakit)
    te, unet, c = _pair()
    opt = build_optimizer(cfg_for("ProdigyPlusScheduleFree", {"split_groups": False, "d0": 1e-3}, learning_rate=1.0),
                          [{"params": [te], "lr": 0.5, "name": "textencoder"},
                           {"params": [unet], "lr": 1.0, "name": "unet"}])
    ratios = _steps(opt, te, unet, c, 60)
    assert max(abs(rz - 0.5) for rz, _, _ in ratios) < 1e-4
    assert max(abs(rp - 0.5) for _, rp, _ in ratios) < 1e-4
    assert opt.param_groups[0]["d"] == opt.param_groups[1]["d"] > 100 * 1e-3  # d adapted, shared


def test_prodigy_plus_split_groups_each_group_adapts_its_own_d():
    # the default split_groups=True: z step of group g = d_g * lr_g * update, d_g per group
    te, unet, c = _pair()
    opt = build_optimizer(cfg_for("ProdigyPlusScheduleFree", {"d0": 1e-3}, learning_rate=1.0),
                          [{"params": [te], "lr": 0.5, "name": "textencoder"},
                           {"params": [unet], "lr": 1.0, "name": "unet"}])
    ratios = _steps(opt, te, unet, c, 60)
    assert abs(ratios[0][0] - 0.5) < 1e-4  # first step: d_te = d_unet = d0
    late = ratios[30:]
    # once the d's have settled, the step ratio is lr_te * d_te / (lr_unet * d_unet)
    assert max(abs(rz - 0.5 * rd) for rz, _, rd in late) < 1e-3
    d_ratio = opt.param_groups[0]["d"] / opt.param_groups[1]["d"]
    assert 0.75 < d_ratio < 0.85  # measured 0.804: the slower TE's distance estimate grew less
    assert 0.37 < late[-1][0] < 0.43  # so the TE steps at ~0.40x the UNet, not 0.5x


def test_prodigy_plus_split_groups_mean_gives_the_lr_ratio_once_settled():
    te, unet, c = _pair()
    opt = build_optimizer(cfg_for("ProdigyPlusScheduleFree", {"d0": 1e-3, "split_groups_mean": True},
                                  learning_rate=1.0),
                          [{"params": [te], "lr": 0.5, "name": "textencoder"},
                           {"params": [unet], "lr": 1.0, "name": "unet"}])
    ratios = _steps(opt, te, unet, c, 60)
    assert max(abs(rz - 0.5) for rz, _, _ in ratios[30:]) < 1e-3
    assert opt.param_groups[0]["d"] != opt.param_groups[1]["d"]  # the groups' own d differ; the mean is shared
    assert opt.param_groups[0]["shared_d"] == opt.param_groups[1]["shared_d"]


def test_prodigy_plus_split_groups_d_makes_up_for_the_lr_on_a_quadratic():
    # with a minimum to reach, the TE's d grows until d_te * lr_te = d_unet * lr_unet (measured)
    torch.manual_seed(0)
    w, t = torch.randn(8, 3), 3 * torch.randn(8, 3)
    res = {}
    for args in ({}, {"split_groups_mean": True}):
        te, unet = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
        opt = build_optimizer(cfg_for("ProdigyPlusScheduleFree", {"d0": 1e-4, **args}, learning_rate=1.0),
                              [{"params": [te], "lr": 0.5, "name": "textencoder"},
                               {"params": [unet], "lr": 1.0, "name": "unet"}])
        for _ in range(150):
            opt.zero_grad()
            (((te - t) ** 2).sum() + ((unet - t) ** 2).sum()).backward()
            opt.step()
        g = opt.param_groups
        res[str(args)] = (g[0]["d"] / g[1]["d"], g[0].get("shared_d"), g[1].get("shared_d"))
    assert res["{}"][0] == pytest.approx(2.0, rel=1e-3)  # the lr ratio 0.5 is cancelled
    d_ratio, shared_te, shared_unet = res["{'split_groups_mean': True}"]
    assert d_ratio > 1.5 and shared_te == shared_unet  # one (harmonic-mean) d drives both: steps keep 0.5


def test_warnings():
    one = [{"params": [torch.zeros(1)], "lr": 1e-3}]
    two = [{"params": [torch.zeros(1)], "lr": 0.5}, {"params": [torch.zeros(1)], "lr": 1.0}]
    assert optimizer_warnings(cfg_for("AdamWScheduleFree", max_grad_norm=0.0), one) == []
    w = optimizer_warnings(cfg_for("AdamWScheduleFree", lr_scheduler="cosine"), one)
    assert len(w) == 1 and "constant" in w[0] and "warmup_steps" in w[0]
    w = optimizer_warnings(cfg_for("RAdamScheduleFree", lr_scheduler="linear"), one)
    assert len(w) == 1 and "no external warmup" in w[0]
    w = optimizer_warnings(cfg_for("SGDScheduleFree", lr_warmup_steps=10), one)
    assert len(w) == 1 and "warmup_steps=N" in w[0]
    w = optimizer_warnings(cfg_for("ProdigyPlusScheduleFree", max_grad_norm=1.0), two)
    assert len(w) == 2 and "split_groups" in w[0] and "clipping" in w[1]
    w = optimizer_warnings(cfg_for("ProdigyPlusScheduleFree", {"split_groups_mean": True}, max_grad_norm=0.0), two)
    assert w == []
    w = optimizer_warnings(cfg_for("ProdigyPlusScheduleFree", max_grad_norm=0.0), one)
    assert len(w) == 1 and "around 1.0" in w[0]
    # use_schedulefree=False turns it into plain Prodigy-like: a schedule is then fine
    w = optimizer_warnings(cfg_for("ProdigyPlusScheduleFree", {"use_schedulefree": False}, max_grad_norm=0.0,
                                   lr_scheduler="cosine"), [{"params": [torch.zeros(1)], "lr": 1.0}])
    assert w == []
