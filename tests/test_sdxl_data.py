"""SDXL's size conditioning on the data side: each sample's original size and the crop offset
sd-scripts records (train_util.BucketManager.get_crop_ltrb and the flip rule in __getitem__)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.data import TrainDataset, scan_folders
from lorakit.data.augment import AugmentOptions
from lorakit.data.buckets import crop_ltrb, crop_top_left


def _png(path: Path, size, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def test_crop_ltrb_fits_the_image_inside_the_bucket():
    # 800x1200 (W x H) in 1024x1024: bucket wider than the image -> height 1024, width 1024 * 2/3
    l, t, r, b = crop_ltrb((1024, 1024), (800, 1200))
    assert (l, t, b) == (170.0, 0.0, 1024) and r == pytest.approx(170 + 682.6667, abs=1e-3)
    assert crop_top_left((1024, 1024), (800, 1200), False) == (0, 170)
    assert crop_top_left((1024, 1024), (800, 1200), True) == (0, 171)   # 1024 - 852.67 = 171.33
    # 1200x800 in 1216x832: image wider -> width 1216, height 810.67, top (832 - 810.67) // 2 = 10
    assert crop_ltrb((1216, 832), (1200, 800))[:3] == (0.0, 10.0, 1216)
    assert crop_top_left((1216, 832), (1200, 800), False) == crop_top_left((1216, 832), (1200, 800), True) == (10, 0)
    assert crop_top_left((64, 64), (64, 64), True) == (0, 0)           # exact size: nothing cropped


def _vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=32).eval()


@pytest.mark.parametrize("random_crop", [False, True])
def test_batches_carry_original_size_and_crop_cached_or_not(tmp_path, random_crop):
    _png(tmp_path / "t" / "4_a" / "wide.png", (100, 60), seed=1)
    _png(tmp_path / "t" / "4_a" / "tall.png", (60, 100), seed=2)
    # one 64x64 bucket: wide fits as 64 x 38.4 -> top (64 - 38.4) // 2 = 12; tall as 38.4 x 64 ->
    # left 12, right 50.4, so its mirror records left 64 - 50.4 = 13.6 -> 13
    ds = TrainDataset(scan_folders(tmp_path / "t"), (64, 64), augment=AugmentOptions(flip_aug=True,
                                                                                      random_crop=random_crop))
    sizes = {"wide.png": (100, 60), "tall.png": (60, 100)}
    want = {("wide.png", False): (12, 0), ("wide.png", True): (12, 0), ("tall.png", False): (0, 12),
            ("tall.png", True): (0, 13)}
    seen = set()
    for epoch in range(4):
        for b in ds.epoch_batches(epoch, 2, seed=0):
            names = [Path(ds.items[i].path).name for i in b.item_indices]
            assert b.bucket == (64, 64) and b.original_sizes == [sizes[n] for n in names]
            # kohya ignores where random_crop cut: the record depends on bucket, size and flip only
            assert b.crop_top_lefts == [want[n, f] for n, f in zip(names, b.flipped)]
            seen |= set(zip(names, b.flipped))
    assert seen == set(want)
    if random_crop:
        return
    plain = [b for e in range(2) for b in ds.epoch_batches(e, 2, seed=0)]
    ds.cache_latents(_vae(), seed=0)
    cached = [b for e in range(2) for b in ds.epoch_batches(e, 2, seed=0)]
    assert cached[0].latents is not None and cached[0].pixels is None
    for p, c in zip(plain, cached):   # the cache needs no copy: the sizes come from the scan of the images
        assert (p.original_sizes, p.crop_top_lefts, p.flipped) == (c.original_sizes, c.crop_top_lefts, c.flipped)
