"""Validation: the held-out split, validation_data_dir, and a validation loss at fixed noise."""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from lorakit.config.load import load_config
from lorakit.data import TrainDataset, scan_folders
from lorakit.data.validate import validate_data_config
from lorakit.errors import ConfigError
from lorakit.train.noise import NoiseSettings
from lorakit.train.plan import plan_for_config
from lorakit.models.sd import SDModel
from lorakit.train import validation as V
from lorakit.train.validation_set import ValidationState

torch.set_num_threads(1)


def make_folder(root, name, n, size=16):
    d = root / name
    d.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (size, size), (i * 20, 10, 0)).save(d / f"img{i:02d}.png")
        (d / f"img{i:02d}.txt").write_text(f"caption {i}", encoding="utf-8")
    return root


def cfg_for(train, **kw):
    return load_config(None, [], {"train_data_dir": str(train), "resolution": 64, **kw})


def test_split_holds_out_a_fraction_per_folder_reproducibly(tmp_path):
    train = make_folder(tmp_path / "t", "2_a", 10)
    make_folder(train, "3_b", 4)
    reg = make_folder(tmp_path / "r", "1_reg", 30)
    cfg = cfg_for(train, reg_data_dir=str(reg), validation_split=0.3, seed=5)
    index = scan_folders(train, reg)
    ds = TrainDataset.from_config(cfg, index)
    # floor(10 * 0.3) = 3 and floor(4 * 0.3) = 1 held out; train: 7 x 2 + 3 x 3 = 23, reg balanced to 23
    assert len(index.validation_items) == 4 and all(it.repeats == 1 for it in index.validation_items)
    assert (index.num_train_images, index.num_reg_samples, len(ds)) == (23, 23, 46)
    assert [f.images for f in index.folders] == [7, 3, 30]
    held = {it.path for it in index.validation_items}
    assert held.isdisjoint({it.path for it in ds.items}) and len(held) == 4
    assert any("validation: 4 images held out" in line for line in index.describe())
    # the same seed gives the same images; validation_seed defaults to the run seed
    again = scan_folders(train, reg, validation_split=0.3, validation_seed=5)
    assert [it.path for it in again.validation_items] == [it.path for it in index.validation_items]
    other = TrainDataset.from_config(cfg.model_copy(update={"validation_seed": 6}), scan_folders(train, reg))
    assert {it.path for it in other.index.validation_items} != {it.path for it in index.validation_items}
    # idempotent, and the plan sees the same numbers
    TrainDataset.from_config(cfg, index)
    assert len(index.validation_items) == 4 and index.num_train_images == 23
    r = plan_for_config(cfg)
    assert (r.num_train_images, r.plan.samples_per_epoch) == (23, 46)
    assert any(line.startswith("validation: 4 images") for line in r.folder_lines)
    # split 0 gives back the whole folder
    index.apply_validation_split(0.0, 5)
    assert (len(index.validation_items), index.num_train_images) == (0, 32)


def test_too_small_folders_hold_nothing_out(tmp_path):
    train = make_folder(tmp_path / "t", "5_a", 3)
    index = scan_folders(train, validation_split=0.25, validation_seed=0)
    assert index.validation_items == [] and index.num_train_images == 15
    assert any("holds out no image" in w for w in index.warnings)


def test_validation_data_dir_and_contradictions(tmp_path):
    train = make_folder(tmp_path / "t", "2_a", 3)
    val = make_folder(tmp_path / "v", "7_val", 2)
    cfg = cfg_for(train, validation_data_dir=str(val))
    index = scan_folders(train)
    ds = TrainDataset.from_config(cfg, index)
    assert len(ds) == 6 and [it.repeats for it in index.validation_items] == [1, 1]
    assert index.validation_source == "validation_data_dir"
    with pytest.raises(ConfigError) as e:
        validate_data_config(cfg.model_copy(update={"validation_split": 0.5}))
    assert e.value.key == "validation_split"
    with pytest.raises(Exception) as e2:
        TrainDataset.from_config(cfg.model_copy(update={"validation_data_dir": str(tmp_path / "nope")}),
                                 scan_folders(train))
    assert getattr(e2.value, "key", None) == "validation_data_dir"
    assert V.should_validate(cfg, 1) and V.should_validate(cfg.model_copy(update={"validate_every_n_epochs": 2}), 4)
    assert not V.should_validate(cfg.model_copy(update={"validate_every_n_epochs": 2}), 3)
    assert not V.should_validate(cfg_for(train), 1)


def test_timesteps_follow_sd_scripts():
    assert V.validation_timesteps(1000) == [200, 400, 600, 800]
    assert V.validation_timesteps(1000, 100, 600) == [200, 300, 400, 500]


class ZeroUNet(torch.nn.Module):
    """Predicts 0: the l2 loss is then the mean of the target squared. Records what it is given."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.seen_training = []
        self.seen_inputs = []

    def forward(self, x, t, context):
        self.seen_training.append(self.training)
        self.seen_inputs.append((x.detach().clone(), t.clone(), context.detach().clone()))
        return SimpleNamespace(sample=torch.zeros_like(x) * self.w)


def test_validation_loss_is_the_training_loss_at_fixed_noise(tmp_path, tiny_components):
    from lorakit.data.latent_cache import file_sha256
    from lorakit.train.loss import min_snr_weight, snr

    train = make_folder(tmp_path / "t", "1_a", 4, size=64)
    comps = tiny_components()
    cfg = cfg_for(train, validation_split=0.5, seed=3, min_snr_gamma=5.0, train_batch_size=3)
    index = scan_folders(train)
    TrainDataset.from_config(cfg, index)
    unet = ZeroUNet().train()
    model = SDModel(unet, comps["vae"], comps["text_encoder"].train(), comps["tokenizer"], comps["scheduler"],
                    v2=False, v_parameterization=False, source="diffusers", name="tiny")
    run = SimpleNamespace(cfg=cfg, model=model, index=index, device=torch.device("cpu"), seed=3,
                          accelerator=SimpleNamespace(autocast=nullcontext), weight_dtype=torch.float32,
                          memory_format=torch.preserve_format,
                          noise_settings=NoiseSettings.from_config(cfg), network=None, optimizer=None,
                          validation=ValidationState(),
                          bus=SimpleNamespace(emit=lambda *a, **k: None))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    loss = V.validation_loss(run)
    assert torch.equal(torch.get_rng_state(), before)
    assert unet.training and comps["text_encoder"].training  # modes restored
    assert unet.seen_training == [False] * 4  # eval during validation: 1 batch x 4 timesteps
    # by hand: target = noise (eps), loss = mean(noise^2) * min(snr, 5) / snr, mean over 2 images x 4 t
    vs = run.validation.set
    assert len(vs) == 2
    abar = comps["scheduler"].alphas_cumprod
    expect = []
    for it, lat in zip(vs.dataset.items, vs.dataset._latents):
        for t in [200, 400, 600, 800]:
            g = torch.Generator().manual_seed(V.validation_noise_seed(3, file_sha256(it.path), t))
            noise = torch.randn(lat.shape, generator=g)
            w = min_snr_weight(snr(abar, torch.tensor([t])), 5.0, False).item()
            expect.append(noise.pow(2).mean().item() * w)
    assert loss == pytest.approx(sum(expect) / 8, rel=1e-6)
    # what the model was given, by hand: the scaled latents noised at t, and the images' own captions
    sf = comps["vae"].config.scaling_factor
    captions = [Path(it.path).with_suffix(".txt").read_text(encoding="utf-8") for it in vs.dataset.items]
    assert len(set(captions)) == 2
    context = model.encode_prompts(captions, max_token_length=cfg.max_token_length, clip_skip=cfg.clip_skip,
                                   weighted=False, device=torch.device("cpu")).context
    assert len(unet.seen_inputs) == 4
    for (x, tt, ctx), t in zip(unet.seen_inputs, [200, 400, 600, 800]):
        assert tt.tolist() == [t, t]
        torch.testing.assert_close(ctx, context)
        for i, (it, lat) in enumerate(zip(vs.dataset.items, vs.dataset._latents)):
            g = torch.Generator().manual_seed(V.validation_noise_seed(3, file_sha256(it.path), t))
            noise = torch.randn(lat.shape, generator=g)
            torch.testing.assert_close(x[i], abar[t].sqrt() * lat * sf + (1 - abar[t]).sqrt() * noise)
    assert V.validation_loss(run) == loss  # fixed noise: the same value every epoch
    assert min(expect) < max(expect) and not math.isnan(loss)


def test_training_is_bit_identical_with_validation(tiny_model_dir, tmp_path, monkeypatch):
    from lorakit.demo import make_synthetic_dataset
    from lorakit.train import loop as loop_mod
    from lorakit.train.loop import train

    data = make_synthetic_dataset(tmp_path / "data", n_images=4, repeats=1)
    base = {"pretrained_model_name_or_path": str(tiny_model_dir), "train_data_dir": str(data),
            "resolution": 64, "network_dim": 4, "learning_rate": 1e-2, "seed": 7, "save_precision": "float",
            "max_train_epochs": 3, "validation_split": 0.25, "network_dropout": 0.1}

    def run(out, validate):
        rows = []
        if not validate:  # the same held-out split, but the loop's validation call does nothing
            monkeypatch.setattr(loop_mod, "maybe_validate", lambda *a, **k: None)
        cfg = load_config(None, [], {**base, "output_dir": str(tmp_path / out)})
        res = train(cfg, [lambda ev: rows.append((ev.kind, ev.data.get("loss")))
                          if ev.kind in ("step", "validation") else None], overwrite=True)
        monkeypatch.undo()
        return res, rows, [loss for k, loss in rows if k == "validation"]

    res0, rows0, plain_vals = run("plain", False)
    res1, rows1, vals = run("val", True)
    assert plain_vals == []  # the plain run really did not validate
    steps0 = [loss for k, loss in rows0 if k == "step"]
    steps1 = [loss for k, loss in rows1 if k == "step"]
    assert len(steps0) == 9 and steps1 == steps0  # 3 train images x 3 epochs, batch 1
    assert [k for k, _ in rows1].count("validation") == 3 and all(math.isfinite(v) for v in vals)
    a, b = load_file(res0.output_file), load_file(res1.output_file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fake_run(tmp_path, tiny_components, **kw):
    """A Run stand-in over 4 images (validation_split 0.5: 2 held out) with a UNet that predicts 0."""
    train = make_folder(tmp_path / "t", "1_a", 4, size=64)
    comps = tiny_components()
    cfg = cfg_for(train, validation_split=0.5, seed=3, train_batch_size=1, **kw)
    index = scan_folders(train)
    TrainDataset.from_config(cfg, index)
    unet = ZeroUNet().train()
    model = SDModel(unet, comps["vae"], comps["text_encoder"], comps["tokenizer"], comps["scheduler"],
                    v2=False, v_parameterization=False, source="diffusers", name="tiny")
    events = []
    bus = SimpleNamespace(emit=lambda kind, step, epoch, **data: events.append((kind, step, epoch, data)))
    return SimpleNamespace(cfg=cfg, model=model, index=index, device=torch.device("cpu"), seed=3,
                           accelerator=SimpleNamespace(autocast=nullcontext), weight_dtype=torch.float32,
                           memory_format=torch.preserve_format,
                           noise_settings=NoiseSettings.from_config(cfg), network=None, optimizer=None,
                           validation=ValidationState(),
                           bus=bus), unet, events


def test_max_validation_steps_caps_the_batches(tmp_path, tiny_components):
    from lorakit.data.latent_cache import file_sha256

    run, unet, events = fake_run(tmp_path, tiny_components, max_validation_steps=1)
    assert V.maybe_validate(run, 3, 1) is not None
    # 2 validation images in batches of 1: only the first batch, 1 image x 4 timesteps = 4 UNet forwards
    assert unet.seen_training == [False] * 4
    (kind, step, epoch, data), = events
    assert (kind, step, epoch, data["batches"], data["images"], data["trigger"]) == ("validation", 3, 1, 1, 1, "epoch")
    # the loss is that of the first image of the fixed order only: mean over its 4 timesteps of mean(noise^2)
    it, lat = run.validation.set.dataset.items[0], run.validation.set.dataset._latents[0]
    expect = [torch.randn(lat.shape, generator=torch.Generator().manual_seed(
        V.validation_noise_seed(3, file_sha256(it.path), t))).pow(2).mean().item() for t in (200, 400, 600, 800)]
    assert data["loss"] == pytest.approx(sum(expect) / 4, rel=1e-6)
    # unset (or 0, the GUI's "off") = every batch: 2 images x 4 timesteps
    for off in (None, 0):
        run.cfg = run.cfg.model_copy(update={"max_validation_steps": off})
        run.validation.last, unet.seen_training = None, []
        res = V.evaluate(run)
        assert (res.batches, res.images, len(unet.seen_training)) == (2, 2, 8)
    assert cfg_for(tmp_path, max_validation_steps=0).max_validation_steps is None


def test_step_and_epoch_validation_at_the_same_step_evaluate_once(tmp_path, tiny_components):
    run, unet, events = fake_run(tmp_path, tiny_components, validate_every_n_steps=5)
    assert [V.should_validate_step(run.cfg, s) for s in range(1, 11)] == [False] * 4 + [True] + [False] * 4 + [True]
    assert V.maybe_validate(run, 4, 1, "step") is None and events == []
    a = V.maybe_validate(run, 5, 1, "step")
    b = V.maybe_validate(run, 5, 1, "epoch")  # the epoch ends at step 5 too: same weights, same noise
    assert a == b and len(unet.seen_training) == 8  # 2 images x 4 timesteps, evaluated once
    assert [(k, s, d["trigger"]) for k, s, _, d in events] == [("validation", 5, "step"), ("validation", 5, "epoch")]
    V.maybe_validate(run, 10, 2, "step")
    assert len(unet.seen_training) == 16  # a new step evaluates again
    # without validation images nothing is due
    assert not V.should_validate_step(cfg_for(tmp_path, validate_every_n_steps=5), 5)


def test_step_validation_events_logs_and_bit_identical_training(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lorakit.demo import make_synthetic_dataset
    from lorakit.monitors import MetricsJsonl, TensorBoard
    from lorakit.train.loop import train

    # 6 images, validation_split 0.2 holds out floor(1.2) = 1: 5 training images, batch 1 -> 1 epoch of 5 steps
    data = make_synthetic_dataset(tmp_path / "data", n_images=6, repeats=1)
    base = {"pretrained_model_name_or_path": str(tiny_model_dir), "train_data_dir": str(data),
            "resolution": 64, "network_dim": 4, "learning_rate": 1e-2, "seed": 7, "save_precision": "float",
            "max_train_epochs": 1, "validation_split": 0.2, "network_dropout": 0.1}

    def run(out, **kw):
        rows = []
        cfg = load_config(None, [], {**base, "output_dir": str(tmp_path / out), **kw})
        subs = [MetricsJsonl(tmp_path / out / "metrics.jsonl"), TensorBoard(tmp_path / out / "logs"),
                lambda ev: rows.append(ev) if ev.kind in ("step", "validation") else None]
        return train(cfg, subs, overwrite=True), rows

    res0, rows0 = run("epoch_only")
    res1, rows1 = run("every2", validate_every_n_steps=2)
    # the rule: every step that is a multiple of 2 (2, 4), and the epoch's end (step 5) as before
    val = [(ev.data["trigger"], ev.step) for ev in rows1 if ev.kind == "validation"]
    assert val == [("step", 2), ("step", 4), ("epoch", 5)]
    assert [(ev.data["trigger"], ev.step) for ev in rows0 if ev.kind == "validation"] == [("epoch", 5)]
    assert all(ev.data["images"] == 1 and ev.data["batches"] == 1 for ev in rows1 if ev.kind == "validation")
    # validation consumes no training randomness: the same step losses and the same adapter
    steps0 = [ev.data["loss"] for ev in rows0 if ev.kind == "step"]
    assert len(steps0) == 5 and [ev.data["loss"] for ev in rows1 if ev.kind == "step"] == steps0
    a, b = load_file(res0.output_file), load_file(res1.output_file)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # logged as sd-scripts names them: step_average by step, epoch_average by epoch; metrics.jsonl rows
    losses = [ev.data["loss"] for ev in rows1 if ev.kind == "validation"]
    import json
    jrows = [json.loads(x) for x in open(tmp_path / "every2" / "metrics.jsonl")]
    assert [(r["validation_trigger"], r["step"], r["validation_batches"]) for r in jrows if "validation_loss" in r] \
        == [("step", 2, 1), ("step", 4, 1), ("epoch", 5, 1)]
    acc = EventAccumulator(str(tmp_path / "every2" / "logs"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss/validation/step_average")] == \
        [(2, pytest.approx(losses[0], rel=1e-6)), (4, pytest.approx(losses[1], rel=1e-6))]
    assert [(e.step, e.value) for e in acc.Scalars("loss/validation/epoch_average")] == \
        [(1, pytest.approx(losses[2], rel=1e-6))]
    assert losses[0] != losses[1]  # the weights moved between the two step validations
