"""`lorakit doctor`: dHash, planted near-duplicate and caption-less image, exit codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from lorakit.cli import main
from lorakit.doctor import dhash, diagnose, hamming


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
