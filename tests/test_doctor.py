"""`lorakit doctor`: dHash, planted near-duplicate and caption-less image, exit codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lorakit.cli import main
from lorakit.doctor import NEAR_DUPLICATE_COLOUR, colour_distance, colour_grid, dhash, diagnose, hamming
from lorakit.demo import make_synthetic_dataset


def smooth(seed: int, size=(160, 128)) -> Image.Image:
    """A smooth random picture (low-res noise upscaled): stable under resizing and JPEG."""
    small = np.random.default_rng(seed).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def test_dhash_worked_values():
    falling = Image.fromarray(np.tile(np.arange(9, dtype=np.uint8)[::-1] * 28, (8, 1)), "L")
    assert dhash(falling) == 2**64 - 1  # every pixel brighter than its right neighbour
    assert dhash(falling.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) == 0
    assert hamming(0b1011, 0b0001) == 2 and hamming(2**64 - 1, 0) == 64


def _dataset(root: Path) -> Path:
    d = root / "data" / "10_sks"
    d.mkdir(parents=True)
    for i in range(4):
        smooth(i).save(d / f"img{i}.png")
        (d / f"img{i}.txt").write_text(f"sks, pose{i % 2}, {'smile' if i == 0 else 'plain'}")
    copy = smooth(2).resize((96, 77), Image.Resampling.LANCZOS)  # img2 resized and re-encoded
    copy.save(d / "copy_of_2.jpg", quality=70)
    (d / "copy_of_2.txt").write_text("sks, pose0")
    smooth(9).save(d / "nocaption.png")  # no .txt while the others have one
    return root / "data"


def test_doctor_finds_near_duplicate_and_caption_less_image(tmp_path, capsys):
    data = _dataset(tmp_path)
    rep = diagnose(data, resolution=(128, 128))
    pairs = {frozenset((a.name, b.name)) for a, b, _ in rep.near_duplicates}
    assert pairs == {frozenset(("img2.png", "copy_of_2.jpg"))}  # only the planted pair
    assert [p.name for p in rep.uncaptioned] == ["nocaption.png"]
    assert rep.duplicates == [] and rep.exit_code == 2
    assert [p.name for p in rep.small] == ["copy_of_2.jpg"]  # 96x77 < 128x128
    text = rep.render()
    assert "6 images x 10 repeats = 60 samples, 5/6 captioned" in text
    assert "nocaption.png" in text and "near duplicates" in text
    assert "    5  100.0%  sks" in text and "    1   20.0%  smile" in text  # top tags with share
    assert main(["doctor", str(data), "--resolution", "128"]) == 2
    assert "MUST FIX" in capsys.readouterr().out


def test_doctor_exact_duplicate_and_clean_dataset(tmp_path):
    d = tmp_path / "data" / "2_x"
    d.mkdir(parents=True)
    for i in range(3):
        smooth(10 + i).save(d / f"{i}.png")
    rep = diagnose(tmp_path / "data", resolution=(128, 128))
    assert rep.exit_code == 0 and rep.near_duplicates == [] and rep.fixes == []
    (d / "dup.png").write_bytes((d / "0.png").read_bytes())
    rep = diagnose(tmp_path / "data", resolution=(128, 128))
    assert [[p.name for p in g] for g in rep.duplicates] == [["0.png", "dup.png"]] and rep.exit_code == 2


def test_colour_grid_worked_values():
    a = Image.new("RGB", (30, 30), (40, 70, 220))
    b = Image.new("RGB", (30, 30), (40, 170, 60))
    assert colour_grid(a).shape == (3, 3, 3) and colour_grid(a)[1, 1].tolist() == [40, 70, 220]
    assert colour_distance(colour_grid(a), colour_grid(b)) == np.sqrt(100**2 + 160**2)  # 188.7


def test_demo_shapes_are_not_near_duplicates_but_copies_are(tmp_path):
    """The demo's data (8 and 16 images, seeds 0-2): dHash pairs within 6 bits measured 35.5 to 153
    apart in colour; resized / JPEG q60 / 4%-cropped copies of 20 smooth pictures stayed within
    1.7 / 1.7 / 23.6 (limit 30)."""
    for seed in (0, 1):
        data = make_synthetic_dataset(tmp_path / f"demo{seed}", n_images=8, repeats=5, seed=seed)
        rep = diagnose(data, resolution=(64, 64))
        assert rep.near_duplicates == [], rep.render()
    d = tmp_path / "copies" / "1_x"
    d.mkdir(parents=True)
    planted = set()
    for i in range(3):
        im = smooth(20 + i)
        im.save(d / f"orig{i}.png")
        w, h = im.size
        copy = {0: im.resize((96, 77), Image.Resampling.LANCZOS),
                1: im,  # re-encoded below
                2: im.crop((6, 5, w - 6, h - 5)).resize(im.size)}[i]  # ~4% cropped off each side
        copy.convert("RGB").save(d / f"copy{i}.jpg", quality=60)
        planted.add(frozenset((f"orig{i}.png", f"copy{i}.jpg")))
    # a blue and a green square on one background: same brightness edges, other colours
    from lorakit.demo import COLOURS, draw_shape
    for name in ("blue", "green"):
        draw_shape("square", COLOURS[name], 96, np.random.default_rng(0)).save(d / f"{name}.png")
    rep = diagnose(tmp_path / "copies", resolution=(64, 64))
    found = {frozenset((a.name, b.name)) for a, b, _ in rep.near_duplicates}
    assert found == planted, rep.render()
    assert hamming(dhash(Image.open(d / "blue.png")), dhash(Image.open(d / "green.png"))) <= 6  # dHash alone: alarm
    assert colour_distance(colour_grid(Image.open(d / "blue.png")),
                           colour_grid(Image.open(d / "green.png"))) > NEAR_DUPLICATE_COLOUR
