"""Watching a run: sample prompts, samplers, d*lr spikes, TensorBoard = metrics.jsonl, plots."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.config.load import load_config
from lorakit.demo import make_synthetic_dataset
from lorakit.errors import ConfigError
from lorakit.monitors import MetricsJsonl, TensorBoard
from lorakit.plot import plot_run
from lorakit.sample.prompts import parse_prompts
from lorakit.sample.samplers import SAMPLERS, canonical, make_scheduler
from lorakit.train.loop import train
from lorakit.train.spike import DlrSpikeDetector


def test_prompt_syntax():
    text = ("# a comment\n"
            "masterpiece, TRIGGER --n worst quality --w 515 --h 712 --d 1 --l 7.5 --s 28 --ss k_euler\n"
            "\n"
            "plain prompt --w 30\n")
    a, b = parse_prompts(text)
    assert (a.prompt, a.negative, a.width, a.height, a.seed, a.scale, a.steps, a.sampler) == (
        "masterpiece, TRIGGER", "worst quality", 512, 712, 1, 7.5, 28, "k_euler")
    assert (b.prompt, b.width, b.height, b.steps, b.scale, b.seed) == ("plain prompt", 64, 512, 30, 7.5, None)
    with pytest.raises(ConfigError):
        parse_prompts("x --q 3")


def test_prompt_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one --d 3\ntwo\n", encoding="utf-8")
    assert [p.prompt for p in parse_prompts(str(f))] == ["one", "two"]
    with pytest.raises(ConfigError):
        parse_prompts(str(tmp_path / "missing.txt"))


def test_sampler_names_build_schedulers():
    from diffusers import DDPMScheduler

    base = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    for name in SAMPLERS:
        if name == "lms":
            continue  # needs scipy
        sched = make_scheduler(name, base)
        assert type(sched).__name__ == SAMPLERS[name][0]
    assert canonical("K_EULER_A") == "euler_a"
    assert make_scheduler("dpm++ 2m karras", base).config.use_karras_sigmas is True
    with pytest.raises(ConfigError):
        canonical("euler_b")


def test_spike_detector_synthetic_series():
    det = DlrSpikeDetector(factor=3.0, window=10)
    series = [1e-6 * 1.5 ** i for i in range(30)]          # Prodigy's climb: must not fire
    series += [series[-1]] * 40                              # plateau: arms the detector
    series += [series[-1] * (1 + 0.5 * i) for i in range(1, 20)]  # the spike
    fired = [i for i, v in enumerate(series) if det.update(v)]
    # the first step whose value exceeds 3x the value 10 steps earlier
    expected = next(i for i in range(70, len(series)) if series[i] > 3 * series[i - 10])
    assert fired[0] == expected
    assert DlrSpikeDetector(0, 10).update(1.0) is False


class SpikyProdigyLike(torch.optim.SGD):
    """SGD that reports a Prodigy-style d: flat, then a x10 jump at step 12."""

    def __init__(self, params, lr=1e-3, **kw):
        super().__init__(params, lr=lr)
        self.k = 0
        for g in self.param_groups:
            g["d"] = 1e-4

    def step(self, closure=None):
        super().step(closure)
        self.k += 1
        for g in self.param_groups:
            g["d"] = 1e-4 if self.k < 12 else 1e-3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d"), n_images=2, repeats=2)


def cfg_for(model, data, out, **kw):
    values = {"pretrained_model_name_or_path": str(model), "train_data_dir": str(data), "output_dir": str(out),
              "resolution": 64, "network_dim": 2, "seed": 3, "max_train_steps": 4}
    values.update(kw)
    return load_config(None, [], values)


def test_spike_stop_ends_run_with_adapter(tiny_model_dir, data, tmp_path):
    events = []
    cfg = cfg_for(tiny_model_dir, data, tmp_path, max_train_steps=16, dlr_spike_window=5,
                  dlr_spike_action="stop", optimizer_type="test_watch.SpikyProdigyLike")
    res = train(cfg, [events.append])
    warn = [e for e in events if e.kind == "warning" and e.data.get("reason") == "dlr_spike"]
    assert len(warn) == 1 and warn[0].step == 12
    assert res.steps == 12 and res.output_file.is_file()
    steps = [e for e in events if e.kind == "step"]
    assert steps[-1].step == 12 and steps[10].data["dlr"]["unet"] == pytest.approx(1e-4 * steps[10].data["lrs"]["unet"])


class GrowingDLike(torch.optim.SGD):
    """SGD that reports a Prodigy-style d of 1e-4 * (steps taken), the same in every group."""

    def __init__(self, params, lr=1e-3, **kw):
        super().__init__(params, lr=lr)
        self.k = 0
        for g in self.param_groups:
            g["d"] = 0.0

    def step(self, closure=None):
        super().step(closure)
        self.k += 1
        for g in self.param_groups:
            g["d"] = 1e-4 * self.k


def test_dlr_is_each_groups_d_times_its_own_lr(tiny_model_dir, data, tmp_path):
    """d*lr per group as the step left d, with the text encoder at half the UNet's lr (kohya's old
    lr/d*lr tag reported group 0, the text encoder, labelled unet: kohya-semantics.md, bugs 3)."""
    events = []
    cfg = cfg_for(tiny_model_dir, data, tmp_path, optimizer_type="test_watch.GrowingDLike",
                  text_encoder_lr=0.5, unet_lr=1.0)
    train(cfg, [events.append])
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4]
    for e in steps:
        assert e.data["lrs"] == {"textencoder": 0.5, "unet": 1.0}
        assert e.data["dlr"]["textencoder"] == pytest.approx(1e-4 * e.step * 0.5, rel=1e-12)
        assert e.data["dlr"]["unet"] == pytest.approx(1e-4 * e.step * 1.0, rel=1e-12)


def test_samples_named_sized_and_training_unchanged(tiny_model_dir, data, tmp_path):
    prompts = ("a red circle --n blue --w 64 --h 72 --d 5 --s 3 --l 5 --ss euler\n"
               "a square --w 80 --h 64 --d 6 --s 2 --ss ddim\n"
               "shapes --d 7 --s 2 --w 64 --h 64 --l 1\n")
    rows_a, rows_b = [], []
    base = dict(max_train_steps=4, train_batch_size=1)  # 4 samples/epoch -> 1 epoch
    train(cfg_for(tiny_model_dir, data, tmp_path / "plain", **base),
          [lambda e: rows_a.append(e.data["loss"]) if e.kind == "step" else None])
    cfg = cfg_for(tiny_model_dir, data, tmp_path / "sampled", sample_prompts=prompts, sample_every_n_steps=2,
                  sample_at_first=True, network_dropout=0.5, **base)
    cfg_plain = cfg.model_copy(update={"sample_prompts": None, "output_dir": str(tmp_path / "plain2")})
    rows_c = []
    train(cfg_plain, [lambda e: rows_c.append(e.data["loss"]) if e.kind == "step" else None])
    train(cfg, [lambda e: rows_b.append(e.data["loss"]) if e.kind == "step" else None])
    assert rows_b == rows_c  # sampling leaves training bit-identical (dropout uses the global RNG)
    files = sorted((tmp_path / "sampled" / "sample").glob("*.png"))
    assert len(files) == 9  # 3 prompts x (before the first step, step 2, step 4)
    names = [f.name for f in files]
    assert all(re.fullmatch(r"last_\d{6}_0[0-2]_\d{14}_[5-7]\.png", n) for n in names), names
    assert {n.split("_")[1] for n in names} == {"000000", "000002", "000004"}
    sizes = {n.split("_")[2]: Image.open(f).size for n, f in zip(names, files)}
    assert sizes == {"00": (64, 72), "01": (80, 64), "02": (64, 64)}


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_run_writes_its_samples(precision, tiny_model_dir, data, tmp_path):
    """The UNet runs in the autocast dtype and the VAE in float32: the sample's latents are decoded in
    the VAE's dtype (handing it bf16/fp16 latents stopped the run at its first sample)."""
    prompt = "a red circle --w 64 --h 64 --d 5 --s 3\n"
    images = {}
    for mp in ("no", precision):
        cfg = cfg_for(tiny_model_dir, data, tmp_path / mp, max_train_steps=2, sample_prompts=prompt,
                      sample_every_n_steps=2, mixed_precision=mp)
        train(cfg, [])
        (f,) = (tmp_path / mp / "sample").glob("*.png")
        images[mp] = np.asarray(Image.open(f), dtype=np.float32)
    assert images[precision].std() > 5  # a drawn image, not a black one
    assert np.abs(images[precision] - images["no"]).mean() < 8  # what float32 draws, up to rounding


def test_same_prompt_same_seed_same_image(tiny_model_dir):
    from lorakit.models.loader import load_sd_model
    from lorakit.sample.generate import generate
    from lorakit.sample.prompts import parse_prompt_line

    model = load_sd_model(str(tiny_model_dir))
    sp = parse_prompt_line("a cat --w 64 --h 64 --d 11 --s 3")
    a, b = generate(model, sp), generate(model, sp)
    assert a.tobytes() == b.tobytes() and a.size == (64, 64)


def test_tensorboard_equals_metrics_and_plots(tiny_model_dir, data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = cfg_for(tiny_model_dir, data, out, max_train_steps=5, lr_scheduler="cosine")
    train(cfg, [MetricsJsonl(out / "metrics.jsonl"), TensorBoard(out / "logs")])
    rows = [json.loads(x) for x in open(out / "metrics.jsonl") if '"loss"' in x]
    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    tb_loss = [(e.step, e.value) for e in acc.Scalars("loss/current")]
    tb_lr = [(e.step, e.value) for e in acc.Scalars("lr/unet")]
    assert [s for s, _ in tb_loss] == [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [v for _, v in tb_loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [v for _, v in tb_lr] == pytest.approx([r["lr/unet"] for r in rows], rel=1e-6)
    assert "loss/average" in acc.Tags()["scalars"] and "lr/textencoder" in acc.Tags()["scalars"]
    written = plot_run(out)
    assert {p.name for p in written} == {"loss.png", "lr.png"}
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(p).size[0] > 100


def test_dlr_includes_prodigy_bias_correction_when_enabled():
    from lorakit.train.loop import bias_correction

    # k = 3 steps taken, betas (0.9, 0.99): sqrt(1 - 0.99^3) / (1 - 0.9^3) = 0.172340 / 0.271
    assert bias_correction({"use_bias_correction": True, "betas": (0.9, 0.99)}, 3) == pytest.approx(0.63594, abs=1e-5)
    assert bias_correction({"use_bias_correction": False, "betas": (0.9, 0.99)}, 3) == 1.0
    assert bias_correction({"lr": 1.0}, 3) == 1.0  # DAdaptation groups without the option


def test_validation_loss_logged_per_epoch(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = make_synthetic_dataset(tmp_path / "d", n_images=4, repeats=1)
    out = tmp_path / "run"
    cfg = cfg_for(tiny_model_dir, data, out, max_train_epochs=2, max_train_steps=None, validation_split=0.25)
    train(cfg, [MetricsJsonl(out / "metrics.jsonl"), TensorBoard(out / "logs")])
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    val = [r for r in rows if "validation_loss" in r]
    assert [(r["epoch"], r["validation_images"]) for r in val] == [(1, 1), (2, 1)]
    assert len([r for r in rows if "loss" in r]) == 6  # 3 training images per epoch, batch 1
    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    tb = [e.value for e in acc.Scalars("loss/validation/epoch_average")]
    assert tb == pytest.approx([r["validation_loss"] for r in val], rel=1e-6)


def test_progress_bar_images_per_second_is_the_training_rate_of_recent_steps():
    # the rate of the steps themselves (4 images in 0.5 s, then in 0.25 s): not images since the start,
    # which counted the sampling before step 1 and made a 33 img/s run read 5 img/s
    import io
    import time
    from types import SimpleNamespace

    from lorakit.events import Event
    from lorakit.monitors import ProgressBar

    bar = ProgressBar(io.StringIO())
    bar(Event("start", data={"plan": SimpleNamespace(total_steps=3, describe=lambda: "3 steps")}))
    time.sleep(0.3)  # sampling before training: left out of the bar's clock too (the ETA)
    bar(Event("sample", 0, 0, {"paths": ["s/a.png"]}))
    assert bar.bar.format_dict["elapsed"] < 0.1
    for step, ips in ((1, 8.0), (2, 16.0)):
        bar(Event("step", step, 1, {"images": 4, "images_per_s": ips, "loss_avg": 0.5, "loss": 0.5,
                                    "lrs": {"unet": 1e-4}}))
    assert "img_s=10.67" in bar.bar.postfix.split(", ")  # 8 images in 0.75 s
    bar(Event("end", 2, 1))
