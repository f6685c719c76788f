"""The pixel scorer: held-out procedural images, worked examples of its two features, blanks."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lorakit.quality import shapes
from lorakit.quality.score import classify, colour_name, shape_name


def test_scorer_reads_held_out_procedural_images():
    rng = np.random.default_rng(2024)  # a seed no training set uses
    wrong = []
    n = 0
    for shape in shapes.SHAPES:
        for colour, rgb in shapes.ALL_COLOURS.items():
            for _ in range(6):
                v = classify(shapes.draw(shape, shapes.jitter(rgb, rng), rng))
                n += 1
                if not v.is_(shape, colour):
                    wrong.append((shape, colour, v))
    assert n == 120
    assert len(wrong) / n <= 0.02, wrong


def test_worked_examples_of_fill_and_solidity():
    img = Image.new("RGB", (64, 64), (240, 240, 240))
    ImageDraw.Draw(img).rectangle((10, 20, 29, 39), fill=(40, 70, 220))  # 20 x 20 px
    v = classify(img)
    assert (v.shape, v.colour, v.area, v.fill, v.solidity) == ("square", "blue", 400, 1.0, 1.0)
    # right triangle of legs 30: area ~ half its box, convex
    img = Image.new("RGB", (64, 64), (240, 240, 240))
    ImageDraw.Draw(img).polygon([(10, 10), (40, 40), (10, 40)], fill=(220, 40, 40))
    v = classify(img)
    assert v.shape == "triangle" and v.colour == "red"
    assert v.fill == pytest.approx(0.5, abs=0.05) and v.solidity > 0.9
    assert shape_name(fill=0.6, solidity=0.75) == "cross"
    assert shape_name(fill=0.78, solidity=0.97) == "circle"


def test_colour_needs_saturation_and_names_the_nearest_hue():
    assert colour_name((128, 128, 128)) is None
    assert colour_name((20, 10, 10)) is None
    assert colour_name((170, 50, 210)) == "purple"
    assert colour_name((240, 120, 40)) in ("red", "yellow")  # orange: between the two


def test_blank_image_and_specks_show_nothing():
    img = Image.new("RGB", (64, 64), (250, 250, 250))
    assert classify(img).shape is None
    ImageDraw.Draw(img).rectangle((30, 30, 35, 35), fill=(220, 40, 40))  # 36 px < MIN_AREA
    assert classify(img).shape is None and classify(img).area == 36
