"""Schedules: docs/kohya-rules.md 2.14 formulas at chosen steps, diffusers' get_scheduler step for step, lr_scheduler_type."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers.optimization import get_scheduler

from lorakit.config.load import load_config
from lorakit.config.schema import TrainConfig
from lorakit.errors import ConfigError
from lorakit.optim.optimizers import build_optimizer
from lorakit.optim.schedulers import build_scheduler, lr_lambda, scheduler_warnings


def lrs_over(sched, opt, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def two_groups(lr_te=0.5, lr_unet=1.0):
    return [{"params": [torch.zeros(2, requires_grad=True)], "lr": lr_te, "name": "textencoder"},
            {"params": [torch.zeros(2, requires_grad=True)], "lr": lr_unet, "name": "unet"}]


def test_formulas_at_chosen_steps():
    T, W = 100, 10
    lin = lr_lambda("linear", T, W)
    assert [lin(s) for s in (0, 5, 10, 55, 100)] == [0.0, 0.5, 1.0, 0.5, 0.0]
    cos = lr_lambda("cosine", T, W)
    assert cos(10) == 1.0 and cos(55) == pytest.approx(0.5) and cos(100) == pytest.approx(0.0)
    assert cos(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 90)))
    rst = lr_lambda("cosine_with_restarts", T, W, num_cycles=3)
    # p = (s-10)/90; value 0.5(1+cos(pi*((3p) mod 1))): restarts at s = 40 and 70
    assert rst(40) == pytest.approx(1.0) and rst(70) == pytest.approx(1.0)
    assert rst(25) == pytest.approx(0.5) and rst(55) == pytest.approx(0.5)
    assert rst(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * (29 / 30))))
    assert rst(100) == 0.0
    poly = lr_lambda("polynomial", T, W, power=2.0, lr_init=1e-3)
    assert poly(5) == 0.5
    assert poly(55) == pytest.approx(((1e-3 - 1e-7) * 0.25 + 1e-7) / 1e-3)
    assert poly(100) == pytest.approx(1e-4) and poly(150) == pytest.approx(1e-4)
    cw = lr_lambda("constant_with_warmup", T, 4)
    assert [cw(s) for s in (0, 1, 4, 99)] == [0.0, 0.25, 1.0, 1.0]
    with pytest.raises(ConfigError):
        lr_lambda("cosine_annealing", T, W)


@pytest.mark.parametrize("name,extra", [
    ("constant", {}), ("constant_with_warmup", {}), ("linear", {}), ("cosine", {}),
    ("cosine_with_restarts", {"num_cycles": 3}), ("polynomial", {"power": 2.0}),
])
def test_matches_diffusers_get_scheduler(name, extra):
    T, W = 57, 6
    sets = [f'lr_scheduler="{name}"', "learning_rate=0.001"]
    if "num_cycles" in extra:
        sets.append(f"lr_scheduler_num_cycles={extra['num_cycles']}")
    if "power" in extra:
        sets.append(f"lr_scheduler_power={extra['power']}")
    cfg = load_config(None, sets)
    opt = build_optimizer(cfg, two_groups(0.0005, 0.001))
    ours = lrs_over(build_scheduler(opt, cfg.lr_scheduler, T, W), opt, T + 3)
    ref_opt = torch.optim.AdamW(two_groups(0.0005, 0.001), lr=0.001)
    kw = {} if name == "constant" else {"num_warmup_steps": W}
    if name not in ("constant", "constant_with_warmup"):
        kw["num_training_steps"] = T
    ref = lrs_over(get_scheduler(name, ref_opt, **kw, **extra), ref_opt, T + 3)
    assert len(ours) == T + 3
    for a, b in zip(ours, ref):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15)


def test_lr_scheduler_type_cosine_annealing_with_kohya_args():
    cfg = load_config(None, ['lr_scheduler_type="CosineAnnealingLR"', "learning_rate=1.0",
                             "optimizer_type=\"Prodigy\""])
    cfg = cfg.model_copy(update={"lr_scheduler_args": {"T_max": 120, "eta_min": 0.2}})
    opt = build_optimizer(cfg, two_groups(1.0, 1.0))
    sched = build_scheduler(opt, cfg.lr_scheduler, 1200, 0)
    assert type(sched) is torch.optim.lr_scheduler.CosineAnnealingLR
    lrs = [v[1] for v in lrs_over(sched, opt, 241)]
    # eta_min + (1 - eta_min)(1 + cos(pi s / T_max)) / 2, periodic in 2 T_max
    for s in (0, 30, 60, 120, 180, 240):
        assert lrs[s] == pytest.approx(0.2 + 0.8 * (1 + math.cos(math.pi * s / 120)) / 2, abs=1e-9)
    assert lrs[120] == pytest.approx(0.2) and lrs[240] == pytest.approx(1.0)
    w = scheduler_warnings(cfg, 1200)
    assert len(w) == 1 and "T_max=120" in w[0] and "1200" in w[0] and "10.0 times" in w[0]
    assert scheduler_warnings(cfg.model_copy(update={"lr_scheduler_args": {"T_max": 1150}}), 1200) == []
    with pytest.raises(ConfigError) as e:
        build_scheduler(build_optimizer(cfg, two_groups()), cfg.lr_scheduler, 1200, 5)
    assert e.value.key == "lr_warmup_steps"


def test_lr_scheduler_args_from_kohya_strings_and_dotted_path():
    cfg = load_config(None, ['lr_scheduler_type="torch.optim.lr_scheduler.StepLR"',
                             'lr_scheduler_args=["step_size=3", "gamma=0.5"]', "learning_rate=0.1"])
    assert cfg.lr_scheduler_args == {"step_size": 3, "gamma": 0.5}
    opt = build_optimizer(cfg, two_groups(0.1, 0.1))
    lrs = [v[0] for v in lrs_over(build_scheduler(opt, cfg.lr_scheduler, 10, 0), opt, 7)]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    with pytest.raises(ConfigError) as e:  # the config refuses the name when it is built
        load_config(None, ['lr_scheduler_type="NoSuchLR"'])
    assert e.value.key == "lr_scheduler_type"
    bad = TrainConfig(lr_scheduler_type="NoSuchLR")  # and the schedule, for a config built without the check
    with pytest.raises(ConfigError) as e:
        build_scheduler(build_optimizer(bad, two_groups()), bad.lr_scheduler, 10, 0)
    assert e.value.key == "lr_scheduler_type"


def test_adafactor_relative_step_uses_adafactor_schedule():
    cfg = load_config(None, ['optimizer_type="Adafactor"', "learning_rate=0.001"])
    opt = build_optimizer(cfg, two_groups())
    sched = build_scheduler(opt, cfg.lr_scheduler, 10, 0)
    assert type(sched).__name__ == "AdafactorSchedule"
    assert [g["lr"] for g in opt.param_groups] == [0.001, 0.001]
