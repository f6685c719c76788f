"""alpha_mask / masked_loss: the alpha channel as a loss mask at latent resolution."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.config.load import load_config
from lorakit.config.schema import TrainConfig
from lorakit.data import TrainDataset, scan_folders
from lorakit.data.augment import AugmentOptions
from lorakit.data.images import latent_mask, load_image_rgb_alpha
from lorakit.data.validate import validate_data_config
from lorakit.errors import ConfigError
from lorakit.train.loss import weighted_loss

torch.set_num_threads(1)


def _tiny_vae(seed=0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=32).eval()


def half_transparent(path: Path, opaque_from: int = 16, size: int = 32) -> Path:
    """Red RGBA image: alpha 0 for x < opaque_from, 255 from there on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size, size, 4), dtype=np.uint8)
    a[..., 0] = 200
    a[:, opaque_from:, 3] = 255
    Image.fromarray(a, "RGBA").save(path)
    return path


def test_mask_is_zero_on_the_transparent_half_at_latent_resolution(tmp_path):
    half_transparent(tmp_path / "t" / "1_a" / "x.png")
    Image.new("RGB", (32, 32), (0, 90, 0)).save(tmp_path / "t" / "1_a" / "y.png")  # no alpha
    ds = TrainDataset(scan_folders(tmp_path / "t"), (32, 32), alpha_mask=True)
    b = ds.make_batch([0, 1], 1, 0)  # pixel path (no cache)
    assert b.masks.shape == (2, 1, 4, 4)
    assert b.masks[0, 0].tolist() == [[0.0, 0.0, 1.0, 1.0]] * 4
    assert torch.equal(b.masks[1], torch.ones(1, 4, 4))  # no alpha channel: counts everywhere
    # the RGB is used as stored under the transparent half (not composited on white)
    assert b.pixels[0, :, 0, 0].tolist() == pytest.approx([200 / 127.5 - 1, -1.0, -1.0])
    # without alpha_mask: composited on white, no masks
    b0 = TrainDataset(scan_folders(tmp_path / "t"), (32, 32)).make_batch([0], 1, 0)
    assert b0.masks is None and b0.pixels[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0]


def test_area_average_on_a_boundary_inside_a_block(tmp_path):
    rgb, alpha = load_image_rgb_alpha(half_transparent(tmp_path / "x.png", opaque_from=12))
    assert rgb.mode == "RGB" and alpha.mode == "L"
    m = latent_mask(np.asarray(alpha), (32, 32))
    assert m[0, 0].tolist() == [0.0, 0.5, 1.0, 1.0]  # block x 8..15 is half opaque


def test_masked_loss_is_the_loss_over_the_opaque_half(tmp_path):
    half_transparent(tmp_path / "t" / "1_a" / "x.png")
    mask = TrainDataset(scan_folders(tmp_path / "t"), (32, 32), alpha_mask=True).make_batch([0], 1, 0).masks
    # target 3 on the transparent columns, 1 on the opaque ones; prediction 0 everywhere
    tgt = torch.ones(1, 4, 4, 4)
    tgt[..., :2] = 3.0
    pred = torch.zeros_like(tgt)
    sched = SimpleNamespace(alphas_cumprod=torch.linspace(0.99, 0.01, 1000))
    cfg = TrainConfig(loss_type="l2")
    t = torch.tensor([500])
    assert weighted_loss(cfg, sched, pred, tgt, t, False).item() == pytest.approx(5.0)  # (9 + 1) / 2
    assert weighted_loss(cfg, sched, pred, tgt, t, False, mask=mask).item() == pytest.approx(1.0)
    # l1 and a flip: mask [1, 1, 0, 0] keeps the 3s
    cfg1 = TrainConfig(loss_type="l1")
    assert weighted_loss(cfg1, sched, pred, tgt, t, False, mask=mask.flip(-1)).item() == pytest.approx(3.0)


def test_cached_masks_follow_the_flip_and_the_disk_key(tmp_path):
    half_transparent(tmp_path / "t" / "4_a" / "x.png")
    vae = _tiny_vae()
    index = scan_folders(tmp_path / "t")
    plain = TrainDataset(index, (32, 32), augment=AugmentOptions(flip_aug=True), cache_to_disk=True)
    plain.cache_latents(vae, seed=1)
    assert plain.cache_stats == {"encoded": 1, "from_disk": 0}
    ds = TrainDataset(index, (32, 32), augment=AugmentOptions(flip_aug=True), cache_to_disk=True, alpha_mask=True)
    ds.cache_latents(vae, seed=1)
    assert ds.cache_stats == {"encoded": 1, "from_disk": 0}  # the key includes alpha_mask: re-encoded
    assert not torch.equal(ds._latents[0], plain._latents[0])  # RGB not composited on white
    (b,) = list(ds.epoch_batches(1, 4, seed=0))
    assert 0 < sum(b.flipped) < 4
    for lat, m, f in zip(b.latents, b.masks, b.flipped):
        assert torch.equal(lat, ds._latents_flipped[0] if f else ds._latents[0])
        assert m[0, 0].tolist() == ([1.0, 1.0, 0.0, 0.0] if f else [0.0, 0.0, 1.0, 1.0])
    again = TrainDataset(index, (32, 32), augment=AugmentOptions(flip_aug=True), cache_to_disk=True,
                         alpha_mask=True)
    again.cache_latents(vae, seed=1)
    assert again.cache_stats == {"encoded": 0, "from_disk": 1}
    assert torch.equal(again._masks[0], ds._masks[0]) and torch.equal(again._latents[0], ds._latents[0])
    # the pixel path (no cache) gives the cached path's masks, draw by draw
    nocache = TrainDataset(index, (32, 32), augment=AugmentOptions(flip_aug=True), alpha_mask=True)
    for s in range(4):
        bp, bc = nocache.make_batch([s], 1, 0), ds.make_batch([s], 1, 0)
        assert torch.equal(bp.masks, bc.masks)


def test_masked_loss_needs_alpha_mask():
    with pytest.raises(ConfigError) as e:
        validate_data_config(load_config(None, [], {"masked_loss": True}))
    assert e.value.key == "masked_loss" and "alpha_mask" in e.value.fix
    validate_data_config(load_config(None, [], {"masked_loss": True, "alpha_mask": True}))
    cfg = load_config(None, [], {"train_data_dir": "x", "alpha_mask": True})
    assert cfg.alpha_mask and not cfg.masked_loss
