"""lorakit.data: kohya folders, captions, images, latent cache and seeded epochs."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lorakit.data import TrainDataset, load_image_rgb, process_caption, resize_center_crop, scan_folders, to_tensor
from lorakit.data.captions import split_tags
from lorakit.data.folders import ImageItem, balance_reg_repeats, parse_folder_name
from lorakit.data.images import cover_size
from lorakit.errors import DataError


def img(path: Path, size=(16, 16), color=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write(path: Path, data: str | bytes) -> None:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    train, reg = tmp_path / "train", tmp_path / "reg"
    dog = train / "10_sks dog"
    img(dog / "a.png"), img(dog / "b.jpg"), img(dog / "c.PNG")
    write(dog / "a.txt", "sks dog, Sitting, grass\nsecond line ignored")
    write(dog / "b.txt", "sks dog, running")
    style = train / "5_style"
    img(style / "x.png"), img(style / "y.webp")
    write(style / "x.txt", "Painting, style")
    img(train / "notes" / "n.png")
    write(train / "notes" / "readme.txt", "not a dataset")
    img(reg / "1_dog" / "r1.png"), img(reg / "1_dog" / "r2.bmp")
    return train, reg


# ---- folders ---------------------------------------------------------------------------
def test_scan_items_repeats_and_captions(tree):
    train, reg = tree
    idx = scan_folders(train, reg)
    got = [(it.path.name, it.caption, it.repeats, it.is_reg, it.subset) for it in idx.items]
    assert got == [
        ("a.png", "sks dog, Sitting, grass", 10, False, "10_sks dog"),
        ("b.jpg", "sks dog, running", 10, False, "10_sks dog"),
        ("c.PNG", "sks dog", 10, False, "10_sks dog"),  # no caption: folder class tokens
        ("x.png", "Painting, style", 5, False, "5_style"),
        ("y.webp", "style", 5, False, "5_style"),
        ("r1.png", "dog", 20, True, "1_dog"),  # reg balanced: 2 images x 20 = 40
        ("r2.bmp", "dog", 20, True, "1_dog"),
    ]
    assert idx.num_train_images == 10 * 3 + 5 * 2 == 40
    assert idx.num_reg_images == 2  # kohya reports reg images before balancing
    assert idx.num_reg_samples == 40
    summary = [(f.name, f.images, f.repeats, f.is_reg, f.samples, f.captions_missing) for f in idx.folders]
    assert summary == [("10_sks dog", 3, 10, False, 30, 1), ("5_style", 2, 5, False, 10, 1),
                       ("1_dog", 2, 1, True, 40, 2)]
    notes = [w for w in idx.warnings if "notes" in w]
    assert len(notes) == 1 and "10_notes" in notes[0]
    assert any("c.PNG" in w and "'sks dog'" in w for w in idx.warnings)
    assert idx.describe()[-1] == "40 train images with repeats, 2 reg images (balanced to 40)"


def test_tag_frequency_and_dataset_dirs(tree):
    idx = scan_folders(*tree)
    assert idx.tag_frequency() == {
        "10_sks dog": {"sks dog": 3, "sitting": 1, "grass": 1, "running": 1},
        "5_style": {"painting": 1, "style": 2},
        "1_dog": {"dog": 2},
    }
    assert idx.dataset_dirs() == {"10_sks dog": {"n_repeats": 10, "img_count": 3},
                                  "5_style": {"n_repeats": 5, "img_count": 2}}


def test_parse_folder_name():
    assert parse_folder_name("10_sks dog") == (10, "sks dog")
    assert parse_folder_name("3_a_b") == (3, "a_b")
    assert parse_folder_name("7") == (7, "")
    assert parse_folder_name("notes") is None
    assert parse_folder_name("x_10") is None


def _reg(n: int, repeats: int) -> list[ImageItem]:
    return [ImageItem(Path(f"r{i}.png"), "", repeats, True, "r") for i in range(n)]


def test_reg_balancing_round_robin():
    items = _reg(3, 1)
    used = balance_reg_repeats(items, 40)  # 3 + 37 extra: 12 full rounds, then one more
    assert [it.repeats for it in used] == [14, 13, 13]
    items = _reg(5, 10)  # 50 > 40: the first pass stops after 4 images
    used = balance_reg_repeats(items, 40)
    assert [it.path.name for it in used] == ["r0.png", "r1.png", "r2.png", "r3.png"]
    assert [it.repeats for it in used] == [10, 10, 10, 10]
    items = _reg(2, 15)  # 30 -> 40: +5 each
    assert [it.repeats for it in balance_reg_repeats(items, 40)] == [20, 20]
    assert balance_reg_repeats(_reg(2, 1), 0) == []


def test_reg_surplus_is_dropped_with_warning(tmp_path):
    for i in range(2):
        img(tmp_path / "t" / "2_a" / f"{i}.png")
    for i in range(3):
        img(tmp_path / "r" / "3_b" / f"{i}.png")
    idx = scan_folders(tmp_path / "t", tmp_path / "r")
    assert idx.num_train_images == 4 and idx.num_reg_images == 9
    assert [(it.path.name, it.repeats) for it in idx.reg_items] == [("0.png", 3), ("1.png", 3)]
    assert idx.num_reg_samples == 6  # kohya overshoots: first pass adds whole images
    assert any("1 of the 3 reg images is not used" in w for w in idx.warnings)
    assert idx.tag_frequency()["3_b"] == {"b": 3}  # counted before balancing, as kohya


def test_caption_bom_crlf_and_empty(tmp_path):
    d = tmp_path / "t" / "1_thing"
    img(d / "a.png"), img(d / "b.png"), img(d / "c.png")
    write(d / "a.txt", b"\xef\xbb\xbf  red, blue \r\nsecond\r\n")
    write(d / "b.txt", b"")
    write(d / "c.txt", "caf\u00e9, \u65e5\u672c\rnext")
    idx = scan_folders(tmp_path / "t")
    assert [it.caption for it in idx.items] == ["red, blue", "", "caf\u00e9, \u65e5\u672c"]


def test_caption_extension(tmp_path):
    d = tmp_path / "t" / "2_x"
    img(d / "a.png")
    write(d / "a.txt", "from txt")
    write(d / "a.caption", "from caption")
    assert scan_folders(tmp_path / "t", caption_extension=".caption").items[0].caption == "from caption"
    assert scan_folders(tmp_path / "t").items[0].caption == "from txt"


def test_non_utf8_caption_names_the_file(tmp_path):
    d = tmp_path / "t" / "1_x"
    img(d / "a.png")
    write(d / "a.txt", "caf\u00e9".encode("latin-1"))
    with pytest.raises(DataError) as e:
        scan_folders(tmp_path / "t")
    assert e.value.file == str(d / "a.txt")
    assert "not UTF-8" in str(e.value) and "0xe9 at offset 3" in str(e.value)
    assert "UTF-8" in e.value.fix


def test_folder_errors(tmp_path):
    with pytest.raises(DataError) as e:
        scan_folders(tmp_path / "nope")
    assert e.value.key == "train_data_dir" and "does not exist" in e.value.message
    f = tmp_path / "file.txt"
    write(f, "x")
    with pytest.raises(DataError, match="not a folder"):
        scan_folders(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="folder is empty") as e:
        scan_folders(tmp_path / "empty")
    assert "10_mychar" in e.value.fix
    img(tmp_path / "np" / "notes" / "a.png"), img(tmp_path / "np" / "misc" / "b.png")
    with pytest.raises(DataError) as e:
        scan_folders(tmp_path / "np")
    assert e.value.message == "no <repeats>_<name> subfolders (found: misc, notes)"
    assert "10_mychar" in e.value.fix
    (tmp_path / "noimg" / "10_a").mkdir(parents=True)
    write(tmp_path / "noimg" / "10_a" / "a.txt", "caption only")
    img(tmp_path / "noimg" / "10_a" / "deeper" / "x.png")  # not recursive
    with pytest.raises(DataError, match=r"no images in the subfolders 10_a"):
        scan_folders(tmp_path / "noimg")
    with pytest.raises(DataError) as e:
        scan_folders(None)
    assert e.value.key == "train_data_dir"


def test_images_directly_in_data_dir(tmp_path):
    img(tmp_path / "10_char" / "a.png")  # user pointed train_data_dir at the subfolder itself
    with pytest.raises(DataError) as e:
        scan_folders(tmp_path / "10_char")
    assert e.value.fix == f"set train_data_dir to the parent folder '{tmp_path}'"
    img(tmp_path / "pics" / "a.png")
    with pytest.raises(DataError) as e:
        scan_folders(tmp_path / "pics")
    assert "10_pics" in e.value.fix


def test_reg_dir_errors_name_reg_key(tmp_path):
    img(tmp_path / "t" / "1_a" / "a.png")
    with pytest.raises(DataError) as e:
        scan_folders(tmp_path / "t", tmp_path / "missing")
    assert e.value.key == "reg_data_dir"


def test_zero_repeats_and_empty_folder_skipped(tmp_path):
    img(tmp_path / "t" / "0_off" / "a.png")
    (tmp_path / "t" / "3_empty").mkdir(parents=True)
    img(tmp_path / "t" / "2_on" / "b.png")
    idx = scan_folders(tmp_path / "t")
    assert [f.name for f in idx.folders] == ["2_on"] and idx.num_train_images == 2
    assert any("0_off" in w for w in idx.warnings) and any("3_empty" in w for w in idx.warnings)


def test_no_class_tokens_gives_empty_caption_with_warning(tmp_path):
    img(tmp_path / "t" / "4" / "a.png")
    idx = scan_folders(tmp_path / "t")
    assert idx.items[0].caption == "" and idx.items[0].repeats == 4
    assert any("empty caption" in w for w in idx.warnings)


# ---- images ------------------------------------------------------------------------------
def test_exif_rotated_image_loads_upright(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)  # stored 20 wide x 10 tall: left red, right blue
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.png", exif=exif.tobytes())
    up = load_image_rgb(tmp_path / "r.png")
    assert up.mode == "RGB" and up.size == (10, 20)  # now 10 wide x 20 tall
    a = np.asarray(up)
    assert (a[:10] == (255, 0, 0)).all() and (a[10:] == (0, 0, 255)).all()  # left went to the top


def test_rgba_composited_on_white(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    arr[0, 1] = (255, 0, 0, 255)
    arr[1, 0] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    arr[1, 1] = (0, 0, 255, 255)
    Image.fromarray(arr, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(load_image_rgb(tmp_path / "a.png")).astype(int)
    assert a[0, 0].tolist() == [255, 255, 255] and a[0, 1].tolist() == [255, 0, 0]
    assert all(abs(v - 127) <= 1 for v in a[1, 0]) and a[1, 1].tolist() == [0, 0, 255]


def test_unreadable_image_is_data_error(tmp_path):
    write(tmp_path / "bad.png", b"not an image")
    with pytest.raises(DataError) as e:
        load_image_rgb(tmp_path / "bad.png")
    assert e.value.file == str(tmp_path / "bad.png")


def test_resize_center_crop_wide_image():
    arr = np.zeros((20, 40, 3), np.uint8)  # 2:1; columns 0-9 red, 10-29 green, 30-39 blue
    arr[:, :10] = (255, 0, 0)
    arr[:, 10:30] = (0, 255, 0)
    arr[:, 30:] = (0, 0, 255)
    out = resize_center_crop(Image.fromarray(arr), (16, 16))
    # scale 16/20 = 0.8 -> 32x16, crop columns 8..24 = original columns 10..30: all green
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    assert (out == (0, 255, 0)).all()
    tall = resize_center_crop(Image.fromarray(arr.transpose(1, 0, 2)), (8, 16))  # 20x40 -> W8 x H16
    assert tall.shape == (16, 8, 3)


def test_cover_size_and_upscale():
    assert cover_size((640, 480), (512, 512)) == (683, 512)
    assert cover_size((480, 640), (512, 512)) == (512, 683)
    assert cover_size((1024, 1024), (512, 768)) == (768, 768)
    assert cover_size((100, 100), (64, 64)) == (64, 64)
    out = resize_center_crop(Image.new("RGB", (8, 4), (9, 99, 199)), (16, 16))  # upscale x4 -> 32x16
    assert out.shape == (16, 16, 3) and (out == (9, 99, 199)).all()


def test_to_tensor_range_and_layout():
    a = np.array([[[0, 255, 51]]], np.uint8)  # 1x1 pixel
    t = to_tensor(a)
    assert t.shape == (3, 1, 1) and t.dtype == torch.float32
    assert torch.allclose(t.flatten(), torch.tensor([-1.0, 1.0, -0.6]))


# ---- captions ------------------------------------------------------------------------------
def test_keep_tokens_keeps_first_and_shuffles_rest():
    rng = random.Random(0)
    seen = set()
    for _ in range(300):
        out = process_caption("a, b ,c,d", shuffle=True, keep_tokens=1, rng=rng)
        tags = out.split(", ")
        assert tags[0] == "a" and sorted(tags[1:]) == ["b", "c", "d"]
        seen.add(tuple(tags[1:]))
    assert seen == set(itertools.permutations(["b", "c", "d"]))
    out2 = {process_caption("a, b, c, d", shuffle=True, keep_tokens=2, rng=rng)[:4] for _ in range(50)}
    assert out2 == {"a, b"}


def test_caption_without_shuffle_is_unchanged():
    assert process_caption("a,b ,c", shuffle=False, keep_tokens=1, rng=random.Random(0)) == "a,b ,c"
    assert split_tags("a,, b", 0) == ([], ["a", "", "b"])  # empty tags kept, as kohya


# ---- dataset ------------------------------------------------------------------------------
def test_samples_batches_and_loss_weights(tree):
    ds = TrainDataset(scan_folders(*tree), (16, 16), prior_loss_weight=0.5)
    assert len(ds) == 40 + 40
    assert ds.num_batches_per_epoch(4) == 20 and ds.num_batches_per_epoch(3) == 27
    batches = list(ds.epoch_batches(epoch=1, batch_size=3, seed=7))
    assert len(batches) == 27 and sorted(len(b) for b in batches)[0] == 2
    counts = [0] * len(ds.items)
    for b in batches:
        assert b.latents is None and b.pixels.shape == (len(b), 3, 16, 16)
        assert b.pixels.min() >= -1 and b.pixels.max() <= 1
        assert b.loss_weights.tolist() == [0.5 if r else 1.0 for r in b.is_reg]
        for i in b.item_indices:
            counts[i] += 1
    assert counts == [10, 10, 10, 5, 5, 20, 20]  # each image `repeats` times per epoch


def test_same_seed_same_batches_across_instances(tree):
    idx_a, idx_b = scan_folders(*tree), scan_folders(*tree)
    a = TrainDataset(idx_a, (16, 16), shuffle_caption=True, keep_tokens=1)
    b = TrainDataset(idx_b, (16, 16), shuffle_caption=True, keep_tokens=1)
    ea = [(x.item_indices, x.captions) for x in a.epoch_batches(2, 4, seed=123)]
    eb = [(x.item_indices, x.captions) for x in b.epoch_batches(2, 4, seed=123)]
    assert ea == eb
    assert a.batch_plan(3, 4, 123) != a.batch_plan(2, 4, 123)  # another epoch, another order
    assert a.batch_plan(2, 4, 124) != a.batch_plan(2, 4, 123)
    caps = {c for _, cs in ea for c in cs if c.startswith("sks dog, ")}
    assert caps == {"sks dog, Sitting, grass", "sks dog, grass, Sitting", "sks dog, running"}  # first tag kept, the rest shuffled per draw


def _tiny_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         norm_num_groups=32, sample_size=64).eval()


def test_latents_cached_once_per_image_and_seeded(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("3_a", 3), ("2_b", 2)):
        for i in range(n):
            p = tmp_path / "t" / name / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(p)
    vae = _tiny_vae()
    calls = []
    orig = vae.encode
    vae.encode = lambda x, *a, **k: (calls.append(x.shape[0]), orig(x, *a, **k))[1]

    ds = TrainDataset(scan_folders(tmp_path / "t"), (64, 64))
    assert len(ds) == 3 * 3 + 2 * 2 == 13
    ds.cache_latents(vae, batch_size=2, device="cpu", dtype=torch.float32, seed=0)
    assert calls == [2, 2, 1]  # 5 unique images, not 13 samples
    assert ds.latents_cached and ds.latent_size == (8, 8)

    calls.clear()
    ds1 = TrainDataset(scan_folders(tmp_path / "t"), (64, 64))
    ds1.cache_latents(vae, batch_size=1, seed=0)
    assert calls == [1] * 5
    from lorakit.data.latent_cache import file_sha256, noise_seed
    first = ds1.items[0].path  # "2_b/0.png": noise from a generator seeded by (seed, image bytes)
    x = to_tensor(resize_center_crop(load_image_rgb(first), (64, 64)))[None]
    with torch.no_grad():
        dist = orig(x).latent_dist
    gen = torch.Generator().manual_seed(noise_seed(0, file_sha256(first), False))
    ref = (dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen))[0]
    assert torch.allclose(ds1._latents[0], ref, atol=1e-5)  # unscaled sample, not times 0.18215
    assert torch.allclose(ds._latents[0], ref, atol=1e-5)  # the same whatever the VAE batch size

    ds2 = TrainDataset(scan_folders(tmp_path / "t"), (64, 64))
    ds2.cache_latents(vae, batch_size=1, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(ds1._latents, ds2._latents))
    ds2.cache_latents(vae, batch_size=1, seed=1)
    assert not torch.equal(ds1._latents[0], ds2._latents[0])

    calls.clear()
    batches = list(ds1.epoch_batches(1, 4, seed=0))
    assert calls == [] and [len(b) for b in batches].count(4) == 3
    for b in batches:
        assert b.pixels is None and b.latents.shape == (len(b), 4, 8, 8) and b.latents.dtype == torch.float32
        for row, i in zip(b.latents, b.item_indices):
            assert torch.equal(row, ds1._latents[i])


def test_from_config(tree):
    from lorakit.config.schema import TrainConfig
    train, reg = tree
    cfg = TrainConfig(train_data_dir=str(train), reg_data_dir=str(reg), resolution="64,128", shuffle_caption=True,
                      keep_tokens=1, prior_loss_weight=0.25, train_batch_size=6)
    ds = TrainDataset.from_config(cfg)
    assert ds.resolution == (64, 128) and ds.latent_size == (16, 8)
    assert ds.caption_options.shuffle and ds.caption_options.keep_tokens == 1 and ds.prior_loss_weight == 0.25
    assert len(ds) == 80 and ds.num_batches_per_epoch(cfg.train_batch_size) == 14  # ceil(80 / 6)


# ---- per-subset settings (dataset_subsets) ---------------------------------------------------
def _subsets_toml(tmp_path: Path, a_extra: str = "", b_extra: str = "", top: str = "") -> Path:
    for name, caps in (("a", {"a1": "red, cat, sitting", "a2": "blue, cat"}), ("b", {"b1": "green, dog"})):
        for stem, text in caps.items():
            img(tmp_path / name / f"{stem}.png")
            write(tmp_path / name / f"{stem}.txt", text)
    p = tmp_path / "run.toml"
    p.write_text(f"""shuffle_caption = true
keep_tokens = 1
flip_aug = true
cache_latents = false
{top}
[[dataset_subsets]]
image_dir = "{tmp_path / 'a'}"
caption_extension = ".txt"
shuffle_caption = false
caption_suffix = "z"
flip_aug = false
{a_extra}
[[dataset_subsets]]
image_dir = "{tmp_path / 'b'}"
caption_extension = ".txt"
num_repeats = 2
caption_dropout_rate = 1.0
{b_extra}
""", encoding="utf-8")
    return p


def test_dataset_subsets_own_settings(tmp_path):
    from lorakit.config.load import load_config
    from lorakit.train.validation import validation_dataset
    cfg = load_config(_subsets_toml(tmp_path))
    ds = TrainDataset.from_config(cfg)
    assert [(it.path.name, it.repeats) for it in ds.items] == [("a1.png", 1), ("a2.png", 1), ("b1.png", 2)]
    assert ds.index.describe()[0] == ("train a: 2 images x 1 repeats -> 2 samples "
                                      "(own settings: shuffle_caption=False, caption_suffix='z', flip_aug=False)")
    for e in range(1, 21):
        # subset a: its own shuffle_caption=false and suffix; subset b: dropout 1.0 -> always ""
        assert [ds.caption_for(s, e, seed=3) for s in range(4)] == ["red, cat, sitting z", "blue, cat z", "", ""]
    flips = [[ds.augmentation_for(s, e, seed=3).flip for s in range(4)] for e in range(1, 7)]
    assert not any(f[0] or f[1] for f in flips)  # subset a: flip_aug=false beats the run's true
    assert [f[2:] for f in flips] == [[True, True], [True, False], [True, True], [False, False], [False, True],
                                      [False, False]]  # subset b (2 draws of b1): the run's flip_aug, seed 3
    # validation drops a subset's random settings but keeps its prefix/suffix
    ds.index.set_validation_items(ds.index.items)
    vds = validation_dataset(cfg, ds.index)
    assert [vds.caption_for(s, 1, seed=3) for s in range(3)] == ["red, cat, sitting z", "blue, cat z", "green, dog"]
    assert not any(vds.augmentation_for(s, e, seed=3).flip for s in range(3) for e in range(1, 9))


def test_dataset_subsets_bad_keys_and_values(tmp_path):
    from lorakit.config.load import load_config
    from lorakit.errors import ConfigError
    with pytest.raises(ConfigError, match="subset 1: unknown key 'flip_agu'; did you mean 'flip_aug'") as e:
        load_config(_subsets_toml(tmp_path, b_extra="flip_agu = true"))
    assert e.value.key == "dataset_subsets"
    with pytest.raises(ConfigError, match="subset 0: caption_dropout_rate: .*less than or equal to 1"):
        load_config(_subsets_toml(tmp_path / "2", a_extra="caption_dropout_rate = 2.0"))
    with pytest.raises(ConfigError, match="subset 0: keep_tokens"):
        load_config(_subsets_toml(tmp_path / "3", a_extra="keep_tokens = -1"))


def test_dataset_subsets_pixel_augs_and_cache(tmp_path):
    from lorakit.config.load import load_config
    from lorakit.data.validate import validate_data_config
    from lorakit.errors import ConfigError
    cached = "cache_latents_to_disk = true"
    # the run's color_aug, turned off by every subset: nothing changes pixels, caching is fine
    cfg = load_config(_subsets_toml(tmp_path, a_extra="color_aug = false", b_extra="color_aug = false",
                                    top=f"color_aug = true\n{cached}"))
    validate_data_config(cfg)
    # one subset inherits the run's color_aug: the run-level key is named
    cfg = load_config(_subsets_toml(tmp_path / "2", a_extra="color_aug = false", top=f"color_aug = true\n{cached}"))
    with pytest.raises(ConfigError, match="cache_latents_to_disk and color_aug are both on") as e:
        validate_data_config(cfg)
    assert e.value.key == "color_aug"
    # a subset's own random_crop: that subset is named
    cfg = load_config(_subsets_toml(tmp_path / "3", b_extra="random_crop = true", top=cached))
    with pytest.raises(ConfigError, match="dataset subset 1 .* has random_crop") as e:
        TrainDataset.from_config(cfg)
    assert e.value.key == "random_crop" and str(tmp_path / "3" / "b") in str(e.value)


def test_cached_mirror_only_for_flip_subsets(tmp_path):
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / name / "0.png")
    from lorakit.data.folders import scan_subsets
    index = scan_subsets([{"image_dir": str(tmp_path / "a")}, {"image_dir": str(tmp_path / "b"), "flip_aug": True}])
    vae = _tiny_vae()
    calls = []
    orig = vae.encode
    vae.encode = lambda x, *a, **k: (calls.append(x.shape[0]), orig(x, *a, **k))[1]
    ds = TrainDataset(index, (64, 64))
    ds.cache_latents(vae, batch_size=2, seed=0)
    assert calls == [2, 1]  # both images, then the mirror of b's only
    assert ds._latents_flipped[0] is None and ds._latents_flipped[1] is not None
    draws = [(e, ds.augmentation_for(1, e, seed=0).flip) for e in range(1, 9)]
    e_flip = next(e for e, f in draws if f)
    batch = ds.make_batch([0, 1], e_flip, seed=0)
    assert batch.flipped == [False, True]
    assert torch.equal(batch.latents[0], ds._latents[0]) and torch.equal(batch.latents[1], ds._latents_flipped[1])
