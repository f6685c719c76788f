"""Buckets, captions (kohya order), augmentation: worked numbers."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorakit.data import TrainDataset, scan_folders
from lorakit.data.augment import AugmentOptions, apply_pixels, draw_augmentation, gamma, hue_shift, Draw
from lorakit.data.buckets import BucketSet, make_bucket_resolutions
from lorakit.data.captions import CaptionOptions
from lorakit.errors import ConfigError


def img(path: Path, size, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


# ---- bucket set ---------------------------------------------------------------------------
def test_bucket_set_512_worked_by_hand():
    # A = 262144; square: floor(512 / 64) * 64 = 512. w = 256: A // 256 = 1024 -> h 1024;
    # w = 320: 819 -> 768; 384: 682 -> 640; 448: 585 -> 576; 576: 455 -> 448; 640: 409 -> 384;
    # 704: 372 -> 320; 768: 341 -> 320; 832: 315 -> 256; 896: 292 -> 256; 960: 273 -> 256; 1024: 256
    got = make_bucket_resolutions((512, 512), 256, 1024, 64)
    assert got == [(256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640),
                   (448, 576), (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256),
                   (896, 256), (960, 256), (1024, 256)]


def test_bucket_set_640x384_steps_128_max_768():
    # A = 245760; sqrt = 495.7 -> 384 square. w = 256: 960 -> 896, capped at 768; 384: 640 -> 640;
    # 512: 480 -> 384; 640: 384 -> 384; 768: 320 -> 256
    assert make_bucket_resolutions((640, 384), 256, 768, 128) == [
        (256, 768), (384, 384), (384, 512), (384, 640), (512, 384), (640, 384), (768, 256)]


def test_bucket_selection_by_aspect_and_cover_size():
    b = BucketSet((512, 512), min_reso=256, max_reso=1024, steps=64)
    p = b.place((1000, 600))  # ar 1.667 = 640 / 384 exactly
    assert p.bucket == (640, 384) and p.resized == (640, 384) and p.ar_error == pytest.approx(0, abs=1e-9)
    p = b.place((300, 500))  # ar 0.6 = 384 / 640; scale 384 / 300 = 1.28 -> 640 high
    assert p.bucket == (384, 640) and p.resized == (384, 640)
    p = b.place((1200, 800))  # ar 1.5: 576/448 = 1.286 (0.214 off), 640/384 = 1.667 (0.167 off)
    assert p.bucket == (640, 384)
    assert p.resized == (640, 427)  # scale 640 / 1200: 800 * 0.5333 = 426.67 -> 427; crop 43 rows, top 21
    assert p.ar_error == pytest.approx(640 / 384 - 1.5)
    assert b.place((448, 576)).bucket == (448, 576)  # exact size match


def test_bucket_no_upscale():
    b = BucketSet((512, 512), steps=64, no_upscale=True)
    p = b.place((300, 200))  # smaller than A: kept, bucket rounded down to 64s
    assert p.resized == (300, 200) and p.bucket == (256, 192)
    # 1024x768 (ar 4/3) > A: width-on-grid gives 576 x 384 (ar 1.5), height-on-grid 512 x 384 (exact)
    p = b.place((1024, 768))
    assert p.resized == (512, 384) and p.bucket == (512, 384)
    assert b.resos == [(256, 192), (512, 384)]


def test_dataset_batches_one_bucket_each_and_bucket_info(tmp_path):
    for i in range(3):
        img(tmp_path / "t" / "1_wide" / f"w{i}.png", (120, 72), i)  # ar 1.667 = 80 / 48 exactly
    for i in range(2):
        img(tmp_path / "t" / "2_tall" / f"t{i}.png", (50, 100), i)  # ar 0.5
    idx = scan_folders(tmp_path / "t")
    buckets = BucketSet((64, 64), min_reso=32, max_reso=128, steps=16)
    ds = TrainDataset(idx, (64, 64), buckets=buckets)
    # A = 4096: w=32 -> 128; 48 -> 80; 64 -> 64; 80 -> 48; 96 -> 32; 112 -> 32; 128 -> 32
    assert make_bucket_resolutions((64, 64), 32, 128, 16) == [
        (32, 96), (32, 112), (32, 128), (48, 80), (64, 64), (80, 48), (96, 32), (112, 32), (128, 32)]
    # ar 0.5: 32/96 = .333 (.167 off), 48/80 = .6 (.1 off), 64/64 = 1 -> (48, 80)
    assert ds.bucket_resos == [(48, 80), (80, 48)]
    info = ds.bucket_info()
    assert info["buckets"] == {3: {"resolution": [48, 80], "count": 4}, 5: {"resolution": [80, 48], "count": 3}}
    assert info["mean_img_ar_error"] == pytest.approx((2 * 0.1 + 3 * abs(80 / 48 - 120 / 72)) / 5)
    assert ds.num_batches_per_epoch(2) == 2 + 2  # ceil(3/2) + ceil(4/2)
    assert ds.num_batches_per_epoch(3) == 1 + 2
    batches = list(ds.epoch_batches(1, 2, seed=5))
    assert len(batches) == 4
    for b in batches:
        names = {ds.items[i].subset for i in b.item_indices}
        assert len(names) == 1  # one bucket per batch
        w, h = b.bucket
        assert b.pixels.shape == (len(b), 3, h, w)
    assert [b.item_indices for b in batches] == [b.item_indices for b in ds.epoch_batches(1, 2, seed=5)]
    plans = {str(ds.batch_plan(e, 2, 5)) for e in range(1, 11)}
    assert len(plans) > 3  # reshuffled per epoch


def test_scale_to_cover_and_centre_crop_pixels(tmp_path):
    # 1200x800 into (640, 384): resized 640x427, rows 21..404 kept
    arr = np.zeros((800, 1200, 3), np.uint8)
    arr[:, :, 0] = (np.arange(800) * 255 // 799)[:, None]  # red ramps down the rows
    Image.fromarray(arr).save(tmp_path / "x.png")
    from lorakit.data.images import load_image_rgb, resize_crop
    out = resize_crop(load_image_rgb(tmp_path / "x.png"), (640, 427), (640, 384))
    full = np.asarray(load_image_rgb(tmp_path / "x.png").resize((640, 427), Image.Resampling.BOX))
    assert out.shape == (384, 640, 3) and np.array_equal(out, full[21:405])


# ---- captions -------------------------------------------------------------------------------
def test_prefix_suffix_and_keep_tokens():
    o = CaptionOptions(prefix="photo of", suffix="4k", shuffle=True, keep_tokens=1)
    outs = {o.apply("sks, a, b", random.Random(i)) for i in range(50)}
    # "photo of sks, a, b 4k": first tag "photo of sks" kept, "a" and "b 4k" shuffled
    assert outs == {"photo of sks, a, b 4k", "photo of sks, b 4k, a"}
    assert CaptionOptions(prefix="p").apply("x, y", random.Random(0)) == "p x, y"  # no split, no join


def test_caption_dropout_rate_over_10000_draws():
    o = CaptionOptions(dropout_rate=0.3)
    rng = random.Random(1)
    dropped = sum(o.apply("a, b", rng) == "" for _ in range(10000))
    assert abs(dropped / 10000 - 0.3) < 0.02


def test_caption_dropout_every_n_epochs_is_one_based():
    o = CaptionOptions(dropout_every_n_epochs=3)
    got = [o.apply("a", random.Random(0), epoch=e) for e in range(1, 8)]
    assert got == ["a", "a", "", "a", "a", "", "a"]


def test_tag_dropout_rate_and_kept_tokens():
    o = CaptionOptions(tag_dropout_rate=0.3, keep_tokens=1)
    rng = random.Random(2)
    kept = {"b": 0, "c": 0}
    for _ in range(10000):
        tags = o.apply("a, b, c", rng).split(", ")
        assert tags[0] == "a"  # never dropped
        for t in tags[1:]:
            kept[t] += 1
    assert abs(kept["b"] / 10000 - 0.7) < 0.02 and abs(kept["c"] / 10000 - 0.7) < 0.02


def test_keep_tokens_separator_head_and_tail():
    o = CaptionOptions(shuffle=True, keep_tokens_separator="|||", keep_tokens=5)
    outs = {o.apply("a, b ||| c, d, , e ||| f", random.Random(i)) for i in range(200)}
    assert len(outs) == 6  # 3! orders of c, d, e; the empty tag removed in this form
    assert all(s.startswith("a, b, ") and s.endswith(", f") for s in outs)
    # without the separator in the caption, keep_tokens applies
    assert {o.apply("x, y", random.Random(i)) for i in range(5)} == {"x, y"}


def test_dataset_captions_reproducible_from_seed(tmp_path):
    img(tmp_path / "t" / "4_a" / "i.png", (16, 16))
    (tmp_path / "t" / "4_a" / "i.txt").write_text("a, b, c, d")
    idx = scan_folders(tmp_path / "t")
    opts = CaptionOptions(shuffle=True, tag_dropout_rate=0.5, dropout_rate=0.2)
    d1 = TrainDataset(idx, (16, 16), caption_options=opts)
    d2 = TrainDataset(scan_folders(tmp_path / "t"), (16, 16), caption_options=opts)
    c1 = [d1.caption_for(s, e, 9) for e in (1, 2) for s in range(4)]
    assert c1 == [d2.caption_for(s, e, 9) for e in (1, 2) for s in range(4)]
    assert c1 != [d1.caption_for(s, e, 10) for e in (1, 2) for s in range(4)]


# ---- augmentation ------------------------------------------------------------------------------
def test_flip_and_color_aug_rates():
    opts = AugmentOptions(flip_aug=True, color_aug=True)
    rng = random.Random(3)
    draws = [draw_augmentation(opts, rng, (64, 64), (64, 64)) for _ in range(10000)]
    assert abs(sum(d.flip for d in draws) / 10000 - 0.5) < 0.02
    colored = [d.color for d in draws if d.color]
    assert abs(len(colored) / 10000 - 0.33) < 0.02
    hues = [v for k, v in colored if k == "hue"]
    gammas = [v for k, v in colored if k == "gamma"]
    assert abs(len(hues) / len(colored) - 0.5) < 0.05
    assert min(hues) >= -8 and max(hues) <= 8 and min(gammas) >= 0.95 and max(gammas) <= 1.05


def test_gamma_and_hue_shift_values():
    a = np.array([[[128, 0, 255]]], np.uint8)
    # 255 * (128 / 255) ** 1.05 = 123.8 -> 124; 0 and 255 are fixed points
    assert gamma(a, 1.05).tolist() == [[[124, 0, 255]]]
    red = np.full((2, 2, 3), (255, 0, 0), np.uint8)
    green = hue_shift(red, 60.0)  # 60 OpenCV units = 120 degrees: red -> green
    assert green[0, 0, 1] == 255 and green[0, 0, 0] < 10 and green[0, 0, 2] < 10
    flipped = apply_pixels(np.arange(6, dtype=np.uint8).reshape(1, 2, 3), Draw(flip=True))
    assert flipped.tolist() == [[[3, 4, 5], [0, 1, 2]]]


def test_random_crop_offsets_and_pixels_flip(tmp_path):
    opts = AugmentOptions(random_crop=True)
    offs = {draw_augmentation(opts, random.Random(i), (80, 70), (64, 64)).crop for i in range(300)}
    assert all(0 <= x <= 16 and 0 <= y <= 6 for x, y in offs) and len(offs) > 20
    img(tmp_path / "t" / "20_a" / "i.png", (16, 16))
    ds = TrainDataset(scan_folders(tmp_path / "t"), (16, 16), augment=AugmentOptions(flip_aug=True))
    (b,) = list(ds.epoch_batches(1, 20, seed=0))
    assert 0 < sum(b.flipped) < 20
    plain = b.pixels[b.flipped.index(False)]
    mirrored = b.pixels[b.flipped.index(True)]
    assert np.array_equal(mirrored.numpy(), plain.numpy()[:, :, ::-1])


def test_cache_with_color_aug_or_random_crop_is_config_error():
    from lorakit.config.schema import TrainConfig
    from lorakit.data.validate import validate_data_config
    with pytest.raises(ConfigError) as e:
        validate_data_config(TrainConfig(cache_latents=True, color_aug=True, random_crop=True))
    msg = str(e.value)
    assert "cache_latents" in msg and "color_aug" in msg and "random_crop" in msg and "fix:" in msg
    validate_data_config(TrainConfig(cache_latents=False, color_aug=True))  # fine without a cache
    validate_data_config(TrainConfig(cache_latents=True, flip_aug=True))  # flip is cached
    with pytest.raises(ConfigError, match="bucket_reso_steps"):
        validate_data_config(TrainConfig(enable_bucket=True, bucket_reso_steps=20))
    with pytest.raises(ConfigError, match="max_bucket_reso"):
        validate_data_config(TrainConfig(enable_bucket=True, resolution=1024, max_bucket_reso=768))


def test_from_config_maps_data_keys(tmp_path):
    from lorakit.config.schema import TrainConfig
    img(tmp_path / "t" / "3_a" / "w.png", (120, 72))
    cfg = TrainConfig(train_data_dir=str(tmp_path / "t"), resolution=512, enable_bucket=True, min_bucket_reso=256,
                      max_bucket_reso=1024, bucket_reso_steps=64, caption_prefix="p", caption_suffix="s",
                      keep_tokens_separator="|||", caption_dropout_rate=0.1, caption_dropout_every_n_epochs=4,
                      caption_tag_dropout_rate=0.2, flip_aug=True, cache_latents=True, cache_latents_to_disk=True)
    ds = TrainDataset.from_config(cfg)
    assert ds.bucket_resos == [(640, 384)]  # 120x72 is ar 1.667 = 640 / 384
    assert ds.caption_options == CaptionOptions(keep_tokens_separator="|||", prefix="p", suffix="s", dropout_rate=0.1,
                                                dropout_every_n_epochs=4, tag_dropout_rate=0.2)
    assert ds.augment == AugmentOptions(flip_aug=True) and ds.cache_to_disk
    with pytest.raises(ConfigError, match="random_crop"):
        TrainDataset.from_config(cfg.model_copy(update={"random_crop": True}))
