"""Cached flipped latents, the keyed disk cache, and robust image scanning."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.data import TrainDataset, scan_folders
from lorakit.data.augment import AugmentOptions
from lorakit.data.images import load_image_rgb
from lorakit.data.latent_cache import disk_path
from lorakit.errors import DataError


def _tiny_vae(seed=0):
    from diffusers import AutoencoderKL
    torch.manual_seed(seed)
    return AutoencoderKL(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=32, sample_size=32).eval()


def rand_png(path: Path, size=(32, 32), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_flip_aug_caches_both_latents_and_picks_per_draw(tmp_path):
    rand_png(tmp_path / "t" / "10_a" / "x.png")
    vae = _tiny_vae()
    ds = TrainDataset(scan_folders(tmp_path / "t"), (32, 32), augment=AugmentOptions(flip_aug=True))
    ds.cache_latents(vae, seed=3)
    z, zf = ds._latents[0], ds._latents_flipped[0]
    assert z.shape == (4, 16, 16) and not torch.allclose(z, zf)
    # the flipped latent is a sample of the mirrored image's distribution, its own noise seed
    from lorakit.data.latent_cache import file_sha256, sample
    path = tmp_path / "t" / "10_a" / "x.png"
    x = torch.from_numpy(np.asarray(load_image_rgb(path))[:, ::-1].copy())
    x = (x.permute(2, 0, 1).float() / 127.5 - 1)[None]
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    ref = sample(dist.mean[0], dist.std[0], 3, file_sha256(path), True)
    assert torch.allclose(zf, ref, atol=1e-5)
    (b,) = list(ds.epoch_batches(1, 10, seed=0))
    assert 0 < sum(b.flipped) < 10
    for row, f in zip(b.latents, b.flipped):
        assert torch.equal(row, zf if f else z)
    (b2,) = list(ds.epoch_batches(1, 10, seed=0))
    assert b2.flipped == b.flipped  # reproducible


def test_disk_cache_names_reuse_and_invalidation(tmp_path):
    a = rand_png(tmp_path / "t" / "1_a" / "a.png", seed=1)
    rand_png(tmp_path / "t" / "1_a" / "b.png", seed=2)
    vae = _tiny_vae()

    def run(resolution=(32, 32), v=vae):
        ds = TrainDataset(scan_folders(tmp_path / "t"), resolution, cache_to_disk=True)
        ds.cache_latents(v, batch_size=2, seed=0)
        return ds

    d1 = run()
    assert d1.cache_stats == {"encoded": 2, "from_disk": 0}
    assert disk_path(a, (32, 32)).name == "a_0032x0032_sd.npz" and disk_path(a, (32, 32)).is_file()
    d2 = run()
    assert d2.cache_stats == {"encoded": 0, "from_disk": 2}
    assert all(torch.equal(p, q) for p, q in zip(d1._latents, d2._latents))  # same latents from disk
    rand_png(a, seed=7)  # the image changes, same name and size: a stale entry
    d3 = run()
    assert d3.cache_stats == {"encoded": 1, "from_disk": 1}
    assert not torch.equal(d3._latents[0], d1._latents[0])
    d4 = run((32, 16))  # another resolution: another file, named width x height as sd-scripts does
    assert d4.cache_stats == {"encoded": 2, "from_disk": 0}
    assert (a.parent / "a_0032x0016_sd.npz").is_file() and not (a.parent / "a_0016x0032_sd.npz").exists()
    assert tuple(d4._latents[0].shape[-2:]) == (16 // 2, 32 // 2)  # (H, W): the tiny VAE halves each side
    d5 = run(v=_tiny_vae(seed=1))  # another VAE: every entry re-encoded
    assert d5.cache_stats == {"encoded": 2, "from_disk": 0}
    flip = TrainDataset(scan_folders(tmp_path / "t"), (32, 32), cache_to_disk=True,
                        augment=AugmentOptions(flip_aug=True))
    flip.cache_latents(_tiny_vae(seed=1), seed=0)
    assert flip.cache_stats == {"encoded": 2, "from_disk": 0}  # flipped moments were missing


def _fixture_folder(root: Path) -> Path:
    d = root / "t" / "5_mixed"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))  # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: upright it is 20 x 40
    im.save(d / "rotated.jpg", exif=exif)
    Image.new("CMYK", (24, 16), (0, 255, 255, 0)).save(d / "cmyk.jpg")
    Image.fromarray(np.array([[0, 32768, 65535, 65535]] * 8, dtype=np.uint16)).save(d / "deep16.png")
    Image.new("RGBA", (16, 16), (255, 0, 0, 0)).save(d / "clear.png")
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(d / "palette.png", transparency=1)
    Image.new("LA", (16, 16), (50, 255)).save(d / "gray_alpha.png")
    Image.new("RGB", (16, 16), (1, 2, 3)).save(d / "UPPER.JPG")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (d / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (d / "truncated.jpeg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return root / "t"


def test_scan_skips_exactly_the_broken_images_with_one_warning(tmp_path):
    idx = scan_folders(_fixture_folder(tmp_path))
    names = sorted(it.path.name for it in idx.items)
    assert names == ["UPPER.JPG", "clear.png", "cmyk.jpg", "deep16.png", "gray_alpha.png", "palette.png",
                     "rotated.jpg"]
    assert sorted(p.name for p, _ in idx.skipped) == ["corrupt.png", "empty.jpg", "truncated.jpeg"]
    listed = [w for w in idx.warnings if "unreadable" in w]
    assert len(listed) == 1 and all(n in listed[0] for n in ("corrupt.png", "empty.jpg", "truncated.jpeg"))
    assert "0 bytes" in listed[0] and "truncated" in listed[0]
    assert idx.num_train_images == 7 * 5  # broken files not counted
    sizes = {it.path.name: it.size for it in idx.items}
    assert sizes["rotated.jpg"] == (20, 40) and sizes["cmyk.jpg"] == (24, 16)

    d = tmp_path / "t" / "5_mixed"
    assert np.asarray(load_image_rgb(d / "deep16.png"))[0, :3, 0].tolist() == [0, 128, 255]  # scaled, not clipped
    assert np.asarray(load_image_rgb(d / "clear.png"))[0, 0].tolist() == [255, 255, 255]  # transparent -> white
    assert np.asarray(load_image_rgb(d / "palette.png"))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(load_image_rgb(d / "gray_alpha.png"))[0, 0].tolist() == [50, 50, 50]
    r, g, b = np.asarray(load_image_rgb(d / "cmyk.jpg"))[8, 12].tolist()
    assert r > 200 and g < 60 and b < 60  # C=0 M=Y=100%: red
    assert load_image_rgb(d / "rotated.jpg").size == (20, 40)
    ds = TrainDataset(idx, (16, 16))
    assert sum(len(b) for b in ds.epoch_batches(1, 4, seed=0)) == 35  # every image loads


def test_only_broken_images_is_a_data_error(tmp_path):
    d = tmp_path / "t" / "1_a"
    d.mkdir(parents=True)
    (d / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="no images"):
        scan_folders(tmp_path / "t")


def test_odd_folder_trains_to_the_end_naming_the_broken_files(tmp_path, tiny_model_dir):
    from lorakit.config.load import load_config
    from lorakit.train.loop import train

    data = _fixture_folder(tmp_path)
    events = []
    cfg = load_config(None, [], {"pretrained_model_name_or_path": str(tiny_model_dir), "train_data_dir": str(data),
                                 "output_dir": str(tmp_path / "o"), "resolution": 64, "network_dim": 2, "seed": 1,
                                 "max_train_epochs": 1, "train_batch_size": 5})
    res = train(cfg, [events.append])
    assert res.steps == 7 and res.output_file.is_file()  # 7 readable images x 5 repeats / batch 5
    warned = [e.data["message"] for e in events if e.kind == "warning" and "unreadable" in e.data["message"]]
    assert len(warned) == 1 and all(n in warned[0] for n in ("corrupt.png", "empty.jpg", "truncated.jpeg"))


def test_stale_cache_temporaries_beside_the_images_are_removed(tmp_path):
    """A run killed while writing `<stem>_<W>x<H>_sd.npz` leaves a hidden temporary beside the image;
    the next disk-cached run removes it when it is old, and keeps a fresh one (another run sharing the
    folder may be writing it now) and anything that is not a cache temporary."""
    import os
    import time

    a = rand_png(tmp_path / "t" / "1_a" / "a.png", seed=1)
    folder = a.parent
    stale = folder / ".a_0032x0032_sd.npz.k3j9x.tmp"
    fresh = folder / ".b_0032x0032_sd.npz.q8w2e.tmp"
    other = folder / ".notes.txt.x1.tmp"
    for p in (stale, fresh, other):
        p.write_bytes(b"half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    ds = TrainDataset(scan_folders(tmp_path / "t"), (32, 32), cache_to_disk=True)
    ds.cache_latents(_tiny_vae(), batch_size=1, seed=0)
    assert ds.removed_temporaries == [stale.name]
    assert not stale.exists() and fresh.exists() and other.exists()
    mem = TrainDataset(scan_folders(tmp_path / "t"), (32, 32))  # no disk cache: the folder is not touched
    os.utime(fresh, (old, old))
    mem.cache_latents(_tiny_vae(), batch_size=1, seed=0)
    assert mem.removed_temporaries == [] and fresh.exists()
