"""LoRA+ (loraplus_lr_ratio & co.): the lora_up matrices learn at lr x ratio in groups of their own."""
from __future__ import annotations

import json

import pytest
import torch

from adapters_helpers import cfg, tiny_models
from lorakit.adapters.network import check_network_config, create_network
from lorakit.errors import ConfigError
from lorakit.optim.optimizers import build_optimizer


def names_lrs(groups):
    return [(g["name"], g["lr"]) for g in groups]


def test_ratio_16_puts_every_lora_up_in_a_plus_group_at_16x():
    net = create_network(cfg(loraplus_lr_ratio=16), *tiny_models())
    groups = net.param_groups(text_encoder_lr=5e-5, unet_lr=1e-4)
    assert names_lrs(groups) == [("textencoder", 5e-5), ("textencoder plus", 16 * 5e-5),
                                 ("unet", 1e-4), ("unet plus", 16 * 1e-4)]
    by_name = {g["name"]: {id(p) for p in g["params"]} for g in groups}
    for part, modules in (("textencoder", net.text_encoder_modules), ("unet", net.unet_modules)):
        assert by_name[part + " plus"] == {id(m.lora_up.weight) for m in modules.values()}
        assert by_name[part] == {id(m.lora_down.weight) for m in modules.values()}
    assert net.network_args["loraplus_lr_ratio"] == "16"


def test_part_ratios_replace_the_common_one():
    net = create_network(cfg(loraplus_lr_ratio=16, loraplus_text_encoder_lr_ratio=4), *tiny_models())
    assert names_lrs(net.param_groups(1e-4, 1e-4)) == [("textencoder", 1e-4), ("textencoder plus", 4e-4),
                                                       ("unet", 1e-4), ("unet plus", 16e-4)]
    net = create_network(cfg(loraplus_unet_lr_ratio=8), *tiny_models())  # the text encoder stays plain
    assert names_lrs(net.param_groups(1e-4, 2e-4)) == [("textencoder", 1e-4), ("unet", 2e-4), ("unet plus", 16e-4)]
    # the GUI's 0 means off
    net = create_network(cfg(loraplus_lr_ratio=0, loraplus_unet_lr_ratio=0), *tiny_models())
    assert [g["name"] for g in net.param_groups(1e-4, 1e-4)] == ["textencoder", "unet"]


def test_loraplus_with_block_lr_weights_splits_each_block():
    net = create_network(cfg(loraplus_lr_ratio=2, mid_lr_weight=0.5, network_train_unet_only=True), *tiny_models())
    groups = dict(names_lrs(net.param_groups(0.0, 1e-4)))
    assert groups["unet_block12"] == 5e-5 and groups["unet_block12 plus"] == 1e-4
    assert groups["unet_block1"] == 1e-4 and groups["unet_block1 plus"] == 2e-4


def test_loraplus_needs_lora_up_matrices():
    for algo in ("loha", "lokr", "ia3", "dylora"):
        with pytest.raises(ConfigError) as e:
            check_network_config(cfg(network_type=algo, loraplus_unet_lr_ratio=16))
        assert e.value.key == "loraplus_lr_ratio" and "lora or locon" in e.value.fix
    check_network_config(cfg(network_type="locon", loraplus_lr_ratio=16))


def test_prodigy_estimates_one_d_and_the_plus_group_moves_16x():
    """Prodigy refuses groups at different lrs; lorakit's group scaling (optim/groupscale.py) runs it at the
    largest lr and scales the other groups' steps, so the effective d*lr of lora_up is 16 x lora_down's."""
    pytest.importorskip("prodigyopt")
    net = create_network(cfg(loraplus_lr_ratio=16, optimizer_type="Prodigy", network_train_unet_only=True),
                         *tiny_models())
    groups = net.param_groups(0.0, 1.0)
    opt = build_optimizer(cfg(optimizer_type="Prodigy"), groups)
    assert [g["lr"] for g in opt.param_groups] == [1.0, 16.0]
    m = next(iter(net.unet_modules.values()))
    with torch.no_grad():  # from 0, so that the float32 steps are not rounded against large weights
        m.lora_up.weight.zero_()
        m.lora_down.weight.zero_()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    down0, up0 = m.lora_down.weight.detach().clone(), m.lora_up.weight.detach().clone()
    opt.step()
    d = [float(g["d"]) for g in opt.param_groups]
    assert d[0] == d[1]
    # Prodigy's first step is d0 * lr * g/|g| per element (Adam-like, grad 1): 16x for lora_up
    step_down = (m.lora_down.weight - down0).abs().mean().item()
    step_up = (m.lora_up.weight - up0).abs().mean().item()
    assert step_down > 0 and step_up == pytest.approx(16 * step_down, rel=1e-5)


def test_train_two_steps_logs_lr_b_16x_lr_a(tiny_model_dir, tmp_path):
    from lorakit.adapters.file import read_adapter_file
    from lorakit.demo import make_synthetic_dataset
    from lorakit.monitors import MetricsJsonl
    from lorakit.train.loop import train
    from train_helpers import tiny_run_config

    data = make_synthetic_dataset(tmp_path / "data", n_images=2, repeats=1)
    c = tiny_run_config(tiny_model_dir, data, tmp_path / "out", {}, network_dim=4, network_alpha=1, seed=1,
                        unet_lr=1e-4, text_encoder_lr=5e-5, max_train_steps=2, loraplus_lr_ratio=16,
                        lr_scheduler="linear")
    res = train(c, [MetricsJsonl(str(tmp_path / "out" / "metrics.jsonl"))], overwrite=True)
    rows = [r for r in (json.loads(x) for x in open(tmp_path / "out" / "metrics.jsonl")) if "loss" in r]
    assert len(rows) == 2
    for r in rows:  # the schedule scales every group alike
        assert r["lr/unet plus"] == pytest.approx(16 * r["lr/unet"], rel=1e-12)
        assert r["lr/textencoder plus"] == pytest.approx(16 * r["lr/textencoder"], rel=1e-12)
    assert rows[0]["lr/unet"] == 1e-4 and rows[1]["lr/unet"] == pytest.approx(5e-5)
    _, meta = read_adapter_file(res.output_file)
    assert json.loads(meta["ss_network_args"])["loraplus_lr_ratio"] == "16"
