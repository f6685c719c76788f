"""network_args merged_op = "auto" (lorakit/adapters/forms.py): each layer shape runs the form measured
faster, the measuring leaves the run as it was, and the values are those of the bypass."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters_helpers import cfg, tiny_models
from lorakit.adapters import forms
from lorakit.adapters.lora import LoConModule
from lorakit.adapters.network import create_network
from lorakit.errors import ConfigError


def trained_forward(unet, te, seed: int = 3) -> torch.Tensor:
    """One training forward and backward of the tiny UNet (what a step does), returns the output."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ids = torch.randint(0, 1000, (2, 77), generator=g)
    unet.train()
    with torch.no_grad():
        enc = te(ids)[0]
    out = unet(x, torch.tensor([10, 500]), enc).sample
    out.square().mean().backward()
    return out.detach()


def auto_net(merged_op="auto", **kw):
    unet, te = tiny_models()
    net = create_network(cfg(network_dim=4, network_alpha=2.0, conv_dim=3, network_args={"merged_op": merged_op},
                             **kw), unet, te)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for m in net.all_modules():
            m.lora_up.weight.copy_(torch.randn(m.lora_up.weight.shape, generator=g) * 0.2)
    net.apply()
    return net, unet, te


def test_auto_is_a_value_of_merged_op_only():
    net, _, _ = auto_net()
    assert all(m.args["merged_op"] == "auto" and m.forms is not None for m in net.all_modules())
    with pytest.raises(ConfigError) as e:
        create_network(cfg(network_args={"merged_op": "sometimes"}), *tiny_models())
    assert "True/False, or auto" in str(e.value)
    with pytest.raises(ConfigError):  # only merged_op takes it
        create_network(cfg(network_type="locon", network_args={"use_tucker": "auto"}), *tiny_models())
    plain, _, _ = auto_net(merged_op=False)
    assert plain.forms is None and all(m.forms is None for m in plain.all_modules())


def test_each_shape_runs_the_form_measured_faster(monkeypatch):
    net, unet, te = auto_net()
    ref, ref_unet, ref_te = auto_net(merged_op=False)
    want = trained_forward(ref_unet, ref_te)
    # the first step: every module notes its shape and runs the bypass
    first = trained_forward(unet, te)
    assert torch.equal(first, want)
    waiting = list(net.forms.waiting.values())
    assert len(waiting) == len(net.unet_modules)  # the text encoder ran without grad here
    # convs measured faster merged, linears not (the timing replaced, so the choice is known)
    timed = []
    monkeypatch.setattr(forms, "time_forms", lambda m, key, timer: timed.append((forms.signature(m), key))
                        or ((1.0, 0.5) if m.is_conv else (1.0, 2.0)))
    measured, won = forms.decide(net.forms)
    assert measured == len(set(timed)) == len(timed)  # one timing per (signature, shape)
    assert 0 < won < measured and not net.forms.waiting
    calls = {"merged": 0}
    real = type(waiting[0]).merged_forward

    def spy(self, x, dw, bias=None):
        calls["merged"] += 1
        return real(self, x, dw, bias)
    monkeypatch.setattr(type(waiting[0]), "merged_forward", spy)
    second = trained_forward(unet, te)
    convs = [m for m in net.unet_modules.values() if m.is_conv]
    assert calls["merged"] == len(convs) > 0  # only the convs, once each
    assert (second - want).abs().max().item() <= 1e-5
    assert not net.forms.waiting  # nothing new to measure


def test_merged_must_win_by_the_margin_and_the_count_is_bounded(monkeypatch):
    net, unet, te = auto_net()
    trained_forward(unet, te)
    monkeypatch.setattr(forms, "time_forms", lambda m, key, timer: (1.0, 0.96))  # 4 % faster: noise
    monkeypatch.setattr(forms, "MAX_SIGNATURES", 3)
    measured, won = forms.decide(net.forms)
    assert (measured, won) == (3, 0)
    chosen = [v for m in net.unet_modules.values() for v in m.forms.chosen.values()]
    assert chosen.count(False) == len(net.unet_modules) and True not in chosen


def test_no_grad_calls_note_nothing():
    net, unet, te = auto_net()
    with torch.no_grad():
        unet(torch.randn(1, 4, 8, 8), torch.tensor([3]), torch.randn(1, 77, 32))
    assert not net.forms.waiting


@pytest.mark.parametrize("kind", ["linear", "conv3x3s2"])
def test_timing_leaves_no_trace(kind):
    torch.manual_seed(0)
    org = nn.Linear(12, 10) if kind == "linear" else nn.Conv2d(12, 10, 3, stride=2, padding=1)
    m = LoConModule("lora_test", org, 4, 3.0, args={"merged_op": "auto"}, dropout=0.5, module_dropout=0.5)
    m.apply()
    m.train()
    shape = (3, 5, 12) if kind == "linear" else (2, 12, 7, 7)
    state = torch.get_rng_state()
    seen = []

    def timer(fn, device):
        fn()
        seen.append(device)
        return 0.001 * len(seen)
    t_bypass, t_merged = forms.time_forms(m, (shape, torch.float32, None), timer)
    assert (t_bypass, t_merged) == (0.001, 0.002) and seen == [torch.device("cpu")] * 2
    assert torch.equal(torch.get_rng_state(), state)  # the run's random stream untouched
    assert all(p.grad is None for p in m.parameters())  # no gradient left behind
    assert m.training and org.training  # the modes restored
    # the real timer: two positive times
    t = forms.time_forms(m, (shape, torch.float32, None), forms.median_time)
    assert all(v > 0 for v in t)


def test_auto_trains_what_the_bypass_trains(tiny_model_dir, tmp_path, monkeypatch):
    from lorakit.adapters import forms
    from lorakit.demo import make_synthetic_dataset
    from lorakit.train.loop import train
    from train_helpers import tiny_run_config

    # every other layer shape "measures" faster merged, so that both forms train whatever this CPU's timings
    calls = []

    def alternate(m, key, timer):
        calls.append(key)
        return (1.0, 0.5) if len(calls) % 2 else (0.5, 1.0)

    monkeypatch.setattr(forms, "time_forms", alternate)
    data = make_synthetic_dataset(tmp_path / "data", n_images=4, repeats=1)
    losses, stats = {}, {}
    for mode in ("false", "auto"):
        seen = []
        values = {"network_type": "lora", "network_dim": 4, "network_alpha": 4, "conv_dim": 2,
                  "max_train_steps": 3, "sample_prompts": None, "learning_rate": 1e-3, "seed": 5,
                  "network_args": {"merged_op": mode}}
        train(tiny_run_config(tiny_model_dir, data, tmp_path / mode, values), [seen.append], overwrite=True)
        steps = [ev for ev in seen if ev.kind == "step"]
        losses[mode] = [ev.data["loss"] for ev in steps]
        stats[mode] = [ev.data["stats"] for ev in steps]
    assert losses["auto"] == pytest.approx(losses["false"], rel=1e-5)
    assert stats["auto"][0]["merged_op/measured"] == len(calls) > 1  # measured after the first step, once
    assert 0 < stats["auto"][0]["merged_op/merged"] < len(calls)  # both forms trained
    assert all("merged_op/measured" not in s for s in stats["auto"][1:] + stats["false"])


def test_auto_with_torch_compile_warns():
    # regional compiling: the layers between the blocks run eagerly and are measured; the blocks are not
    from lorakit.train.speed import validate_speed_config

    warnings = validate_speed_config(cfg(torch_compile=True, dynamo_backend="aot_eager",
                                         network_args={"merged_op": "auto"}))
    assert any("merged_op = auto measures eager layers only" in w for w in warnings)
