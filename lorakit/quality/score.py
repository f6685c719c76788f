"""Say which shape and which colour an image shows, from its pixels (no learnt weights).

The background is the median colour of the border; the foreground is the largest connected
region of pixels far from it. Colour: the hue of the foreground's median colour, nearest named
hue (saturation and brightness must make it a colour at all). Shape, from the region alone:
fill = area / bounding-box area (square ~1, circle ~pi/4, triangle ~1/2) and solidity =
area / convex-hull area (the cross is the only non-convex shape, ~0.7).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .shapes import ALL_COLOURS, hue_of

HUES = {name: hue_of(rgb) for name, rgb in ALL_COLOURS.items()}
MIN_AREA = 40          # pixels of a 64 px image: smaller blobs are noise, not a drawing
FG_DISTANCE = 60.0     # L1 RGB distance from the background that makes a pixel foreground


@dataclass(frozen=True)
class Verdict:
    shape: str | None
    colour: str | None
    fill: float = 0.0
    solidity: float = 0.0
    area: int = 0

    def is_(self, shape: str | None, colour: str | None) -> bool:
        """True when the shape and colour match (None for either means 'any')."""
        return (shape is None or self.shape == shape) and (colour is None or self.colour == colour)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of ``mask`` (two-pass union-find on run labels)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    parent = [0]

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    nxt = 1
    for y in range(h):
        row = mask[y]
        for x in range(w):
            if not row[x]:
                continue
            up = labels[y - 1, x] if y else 0
            left = labels[y, x - 1] if x else 0
            if up and left:
                a, b = find(up), find(left)
                labels[y, x] = min(a, b)
                parent[max(a, b)] = min(a, b)
            elif up or left:
                labels[y, x] = up or left
            else:
                parent.append(nxt)
                labels[y, x] = nxt
                nxt += 1
    if nxt == 1:
        return mask & False
    roots = np.array([find(i) for i in range(nxt)])
    flat = roots[labels]
    counts = np.bincount(flat[mask], minlength=nxt)
    return flat == int(np.argmax(counts))


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of integer points (Andrew's monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def colour_name(rgb) -> str | None:
    r, g, b = (float(c) / 255.0 for c in rgb)
    _, s, v = colorsys.rgb_to_hsv(r, g, b)
    if s < 0.35 or v < 0.3:
        return None
    h = hue_of(rgb)
    return min(HUES, key=lambda n: min(abs(h - HUES[n]), 360 - abs(h - HUES[n])))


def shape_name(fill: float, solidity: float) -> str:
    if solidity < 0.87:
        return "cross"
    if fill > 0.9:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def classify(image) -> Verdict:
    """The shape and colour ``image`` (PIL image or HxWx3 uint8 array) shows; None where it shows none."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg = np.median(border, axis=0)
    mask = np.abs(arr - bg).sum(axis=2) > FG_DISTANCE
    region = _largest_component(mask)
    area = int(region.sum())
    if area < MIN_AREA:
        return Verdict(None, None, area=area)
    colour = colour_name(np.median(arr[region], axis=0))
    ys, xs = np.nonzero(region)
    box = float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    # the hull of pixel corners, so that a filled square has solidity 1
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    hull = _hull_area(corners)
    fill, solidity = area / box, (area / hull if hull else 0.0)
    return Verdict(shape_name(fill, solidity), colour, round(fill, 3), round(solidity, 3), area)


def accuracy(images, shape: str | None, colour: str | None) -> float:
    """Fraction of ``images`` classified as ``shape`` and ``colour`` (None = any)."""
    images = list(images)
    return sum(classify(im).is_(shape, colour) for im in images) / max(1, len(images))
