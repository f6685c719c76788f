"""Procedurally drawn shapes: the shipped base model's training data and the demo's concepts.

One coloured shape on a plain light background, position and size varied. Colours are named
by hue so that :mod:`lorakit.quality.score` can read them back from pixels.
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle", "cross")
# The base model's colours; "purple" is kept out of its training data for the demo's concept.
COLOURS = {"red": (220, 40, 40), "yellow": (230, 200, 40), "green": (40, 170, 60), "blue": (40, 70, 220)}
NEW_COLOURS = {"purple": (170, 50, 210)}
ALL_COLOURS = {**COLOURS, **NEW_COLOURS}
SUPERSAMPLE = 4


def hue_of(rgb) -> float:
    """Hue in degrees [0, 360)."""
    r, g, b = (c / 255.0 for c in rgb)
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


def caption(shape: str, colour: str) -> str:
    return f"a {colour} {shape}"


def _outline(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon points of a shape of half-extent r around (cx, cy); None for the circle."""
    if shape == "circle":
        return None
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "cross":
        w = r * 0.36
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def draw(shape: str, rgb, rng: np.random.Generator, size: int = SIZE,
         background=None) -> Image.Image:
    """One shape of colour ``rgb``, half-extent 22-40 % of the image, anywhere it fits."""
    bg = tuple(int(c) for c in (background if background is not None else rng.integers(205, 256, size=3)))
    s = SUPERSAMPLE
    big = size * s
    r = float(rng.uniform(0.22, 0.40)) * size
    margin = r + 2
    cx, cy = (float(rng.uniform(margin, size - margin)) for _ in range(2))
    img = Image.new("RGB", (big, big), bg)
    d = ImageDraw.Draw(img)
    pts = _outline(shape, cx * s, cy * s, r * s)
    fill = tuple(int(c) for c in rgb)
    if pts is None:
        d.ellipse((cx * s - r * s, cy * s - r * s, cx * s + r * s, cy * s + r * s), fill=fill)
    else:
        d.polygon(pts, fill=fill)
    return img.resize((size, size), Image.Resampling.BOX)


def jitter(rgb, rng: np.random.Generator, amount: int = 12) -> tuple[int, int, int]:
    """The named colour with a little per-image variation (the hue stays in its class)."""
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Any saturated colour (the VAE sees all hues so that it can draw colours the UNet never learnt)."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.5, 1.0), rng.uniform(0.55, 0.95)
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))


def to_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.uint8)
