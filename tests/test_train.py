"""End-to-end training on the tiny model: loss falls, determinism, accumulation, schedule, files."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorakit.cli import main
from lorakit.demo import make_synthetic_dataset
from lorakit.monitors import MetricsJsonl
from lorakit.train.loop import train
from train_helpers import tiny_run_config


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("data"), n_images=4, repeats=2)


DEFAULTS = {"network_dim": 4, "network_alpha": 2, "learning_rate": 1e-3, "seed": 7, "max_train_steps": 4}


def make_cfg(model_dir, data_dir, out, **kw):
    return tiny_run_config(model_dir, data_dir, out, DEFAULTS, **kw)


def run(cfg):
    rows = []
    res = train(cfg, [MetricsJsonl(cfg.output_dir + "/metrics.jsonl"),
                      lambda ev: rows.append(ev.data) if ev.kind == "step" else None], overwrite=True)
    return res, rows


def test_loss_falls_and_same_seed_same_losses(tiny_model_dir, shapes_data, tmp_path):
    cfg = make_cfg(tiny_model_dir, shapes_data, tmp_path / "a", max_train_steps=40, learning_rate=1e-2,
                   train_batch_size=2)
    res, rows = run(cfg)
    losses = [r["loss"] for r in rows]
    assert len(losses) == 40
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    _, rows2 = run(cfg.model_copy(update={"output_dir": str(tmp_path / "b"), "max_train_steps": 8}))
    assert [r["loss"] for r in rows2] == losses[:8]  # bit-identical on CPU

    lines = [json.loads(x) for x in open(tmp_path / "a" / "metrics.jsonl")]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert {"epoch", "loss", "lr/unet", "lr/textencoder"} <= set(steps[0])
    assert res.output_file.name == "last.safetensors"


def test_runs_of_another_precision_in_one_process(tiny_model_dir, shapes_data, tmp_path):
    """train() is a library call: fp32, then bf16, then fp32 again in one process (accelerate keeps
    one global state that would refuse the change); the third run repeats the first bit for bit."""
    cfg = make_cfg(tiny_model_dir, shapes_data, tmp_path / "a", max_train_steps=2)
    _, fp32 = run(cfg)
    res, bf16 = run(cfg.model_copy(update={"output_dir": str(tmp_path / "b"), "mixed_precision": "bf16"}))
    assert res.model.unet.dtype == torch.bfloat16
    _, again = run(cfg.model_copy(update={"output_dir": str(tmp_path / "c")}))
    assert [r["loss"] for r in again] == [r["loss"] for r in fp32]
    assert [r["loss"] for r in bf16] != [r["loss"] for r in fp32]
    assert [r["loss"] for r in bf16] == pytest.approx([r["loss"] for r in fp32], rel=0.05)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_accumulation_equals_bigger_batch(tiny_model_dir, shapes_data, tmp_path, checkpointing):
    # SGD: the update is lr x gradient, so equal gradients give equal adapters (Adam would divide
    # float noise by tiny second moments on the first steps)
    common = dict(max_train_steps=3, learning_rate=0.5, gradient_checkpointing=checkpointing,
                  lr_scheduler="cosine", lr_warmup_steps=1, optimizer_type="SGD")
    big, rows_big = run(make_cfg(tiny_model_dir, shapes_data, tmp_path / "big", train_batch_size=2, **common))
    acc, rows_acc = run(make_cfg(tiny_model_dir, shapes_data, tmp_path / "acc", train_batch_size=1,
                                 gradient_accumulation_steps=2, **common))
    a, b = load_file(big.output_file), load_file(acc.output_file)
    assert a.keys() == b.keys()
    moved = max(a[k].abs().max().item() for k in a if "lora_up" in k)
    assert moved > 1e-4  # the updates happened (lora_up starts at zero)
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-6, diff
    # the schedule advanced once per optimizer step: warmup 1 step, then cosine over 3
    lrs = [r["lrs"]["unet"] for r in rows_acc]
    assert lrs == pytest.approx([0.0, 0.5, 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5))])
    assert [r["loss"] for r in rows_acc] == pytest.approx([r["loss"] for r in rows_big], rel=1e-5)


def test_te_frozen_when_lr_zero(tiny_model_dir, shapes_data, tmp_path):
    res, rows = run(make_cfg(tiny_model_dir, shapes_data, tmp_path, text_encoder_lr=0.0, max_train_steps=2))
    assert set(rows[0]["lrs"]) == {"unet"}
    keys = load_file(res.output_file).keys()
    assert not any(k.startswith("lora_te_") for k in keys)
    assert any(k.startswith("lora_unet_") for k in keys)


def test_cli_train_writes_files_and_refuses_clobber(tiny_model_dir, shapes_data, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('resolution = 64\nnetwork_dim = 2\nmax_train_steps = 2\nseed = 1\nsave_every_n_steps = 1\n'
                   'output_name = "mine"\n')
    args = ["train", str(cfg), "--model", str(tiny_model_dir), "--data", str(shapes_data),
            "--output", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 0
    out = tmp_path / "out"
    assert (out / "mine.safetensors").is_file() and (out / "mine-step00000001.safetensors").is_file()
    assert len([x for x in open(out / "metrics.jsonl") if '"loss"' in x]) == 2
    assert list((out / "logs").iterdir())
    before = (out / "mine.safetensors").read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "mine.safetensors").read_bytes() == before
    assert main(args + ["--overwrite", "--set", "max_train_steps=1"]) == 0


def test_cli_missing_data_exits_2_before_model_load(tiny_model_dir, tmp_path, capsys):
    code = main(["train", "--model", str(tiny_model_dir), "--data", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "nope" in capsys.readouterr().err


def test_max_norm_caps_every_key_once_per_step(tiny_model_dir, shapes_data, tmp_path):
    from lorakit.adapters.file import read_adapter_file

    res, rows = run(make_cfg(tiny_model_dir, shapes_data, tmp_path, max_train_steps=4, learning_rate=0.5,
                             scale_weight_norms=0.05, gradient_accumulation_steps=2))
    assert rows[-1]["stats"]["max_norm/keys_scaled"] > 0
    assert rows[-1]["stats"]["max_norm/max_key_norm"] <= 0.05 + 1e-6
    tensors, meta = read_adapter_file(res.output_file)
    assert meta["ss_scale_weight_norms"] == "0.05"
    for name in {k.rsplit(".", 2)[0] for k in tensors if k.endswith("lora_up.weight")}:
        up, down = tensors[f"{name}.lora_up.weight"].flatten(1), tensors[f"{name}.lora_down.weight"]
        delta = up @ down.flatten(1) * (tensors[f"{name}.alpha"].item() / down.shape[0])
        assert delta.norm().item() <= 0.05 * (1 + 1e-4), name


def test_retention_keeps_the_newest_files(tiny_model_dir, shapes_data, tmp_path):
    cfg = make_cfg(tiny_model_dir, shapes_data, tmp_path, max_train_steps=6, save_every_n_steps=1,
                   save_last_n_steps=2, save_state=True, save_last_n_steps_state=1)
    run(cfg)
    names = sorted(p.name for p in tmp_path.iterdir() if "step" in p.name or p.name.startswith("last"))
    assert names == ["last-state", "last-step00000003.safetensors", "last-step00000004-state",
                     "last-step00000004.safetensors", "last-step00000005-state",
                     "last-step00000005.safetensors", "last.safetensors"]


class _Placed(torch.nn.Module):
    """A module that records where it is sent, without moving (the CPU has no second device)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.sent: list[str] = []

    def to(self, device):
        self.sent.append(str(device))
        return self


def test_on_device_sends_a_module_back_where_it_was_even_after_an_error():
    from lorakit.transfer import on_device

    m = _Placed()
    with on_device(m, "cuda:0") as inside:
        assert inside is m and m.sent == ["cuda:0"]
    assert m.sent == ["cuda:0", "cpu"]
    with pytest.raises(ZeroDivisionError), on_device(m, "cuda:1"):
        1 / 0
    assert m.sent[2:] == ["cuda:1", "cpu"]


@pytest.mark.parametrize("cached", [True, False])
def test_the_vae_visits_the_device_only_to_encode_and_decode(tiny_model_dir, shapes_data, tmp_path, cached):
    """With cached latents no step uses the VAE: it is sent to the device to cache them and to decode
    the samples, and home after each (sd-scripts too moves it off after caching: 335 MB of an SD VAE
    in float32). Without the cache it encodes every batch, so it is sent once and stays."""
    from diffusers import AutoencoderKL

    sent: list[tuple[str, str]] = []
    phase = ["setup"]
    real_to = AutoencoderKL.to

    def to(self, *args, **kwargs):
        sent.append((phase[0], str(args[0] if args else kwargs.get("device"))))
        return real_to(self, *args, **kwargs)

    def on(ev):
        if ev.kind in ("start", "step"):
            phase[0] = f"after step {ev.step}" if ev.kind == "step" else "training"
    cfg = make_cfg(tiny_model_dir, shapes_data, tmp_path, cache_latents=cached, max_train_steps=2,
                   sample_prompts="a red circle --w 64 --h 64 --s 2", sample_every_n_steps=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AutoencoderKL, "to", to)
        train(cfg, [on], overwrite=True)
    assert len(list((tmp_path / "sample").glob("*.png"))) == 1
    there, home = "cpu", "cpu"  # the device and the host are one here; the moves are what is checked
    setup = [d for p, d in sent if p == "setup"]
    assert setup == ([there, home] if cached else [there])
    # the sample at step 2: to the device for all the prompts and again (a no-op) for the one image
    assert [d for p, d in sent if p == "after step 2"] == [there, there, home, home]
    assert [p for p, _ in sent if p != "setup"] == ["after step 2"] * 4
