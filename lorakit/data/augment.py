"""Per-draw image augmentation (docs/kohya-rules.md 2.8), all randomness from the `rng` given.

- flip_aug: mirror left-right with p = 0.5. With cached latents both the image's latent
  and its mirror's latent are cached and one is picked per draw.
- color_aug: with p = 0.33, then with even odds either a hue shift of U(-8, 8) on OpenCV's
  0..180 hue scale (i.e. +-16 degrees) or a gamma U(0.95, 1.05). The gamma is applied to
  values normalised to 0..1 (albumentations' RandomGamma, which sd-scripts once used;
  sd-scripts' later numpy rewrite raises 0..255 values to the power, which clips).
- random_crop: the crop offset is uniform over the excess instead of centred.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from PIL import Image

COLOR_AUG_P = 0.33
HUE_SHIFT_LIMIT = 8.0  # OpenCV hue units (0..180)
GAMMA_RANGE = (0.95, 1.05)


@dataclass(frozen=True)
class AugmentOptions:
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False

    def override(self, settings: dict[str, Any]) -> "AugmentOptions":
        """These options with a subset's own flip_aug / color_aug / random_crop (other keys ignored)."""
        mine = {f.name: bool(settings[f.name]) for f in fields(self) if settings.get(f.name) is not None}
        return replace(self, **mine) if mine else self

    @property
    def changes_pixels(self) -> bool:
        """Augmentations a cached latent cannot carry (flip can: its latent is cached too)."""
        return self.color_aug or self.random_crop


@dataclass(frozen=True)
class Draw:
    """The augmentation of one draw of one sample."""
    flip: bool = False
    crop: tuple[int, int] | None = None  # (left, top); None = centre
    color: tuple[str, float] | None = None  # ("hue", shift) or ("gamma", g)


def draw_augmentation(opts: AugmentOptions, rng: random.Random, resized: tuple[int, int],
                      size: tuple[int, int]) -> Draw:
    """Decide one draw: the same rng state gives the same decisions."""
    crop = None
    if opts.random_crop:
        crop = (rng.randint(0, resized[0] - size[0]), rng.randint(0, resized[1] - size[1]))
    color = None
    if opts.color_aug and rng.random() < COLOR_AUG_P:
        if rng.random() < 0.5:
            color = ("hue", rng.uniform(-HUE_SHIFT_LIMIT, HUE_SHIFT_LIMIT))
        else:
            color = ("gamma", rng.uniform(*GAMMA_RANGE))
    flip = opts.flip_aug and rng.random() < 0.5
    return Draw(flip, crop, color)


def hue_shift(arr: np.ndarray, shift: float) -> np.ndarray:
    """Rotate the hue of a uint8 (H, W, 3) RGB image by `shift` OpenCV units (1 unit = 2 degrees)."""
    hsv = np.asarray(Image.fromarray(arr, "RGB").convert("HSV")).copy()
    delta = int(round(shift * 256.0 / 180.0))  # PIL's hue runs 0..255 for 360 degrees
    hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + delta) % 256).astype(np.uint8)
    return np.asarray(Image.fromarray(hsv, "HSV").convert("RGB"))


def gamma(arr: np.ndarray, g: float) -> np.ndarray:
    """255 * (x / 255) ** g, rounded, on a uint8 image."""
    out = 255.0 * (arr.astype(np.float64) / 255.0) ** g
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_pixels(arr: np.ndarray, draw: Draw) -> np.ndarray:
    """Colour change then flip on a cropped uint8 (H, W, 3) image."""
    if draw.color is not None:
        kind, v = draw.color
        arr = hue_shift(arr, v) if kind == "hue" else gamma(arr, v)
    if draw.flip:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(arr)
