"""Aspect-ratio buckets (kohya-semantics 2.6, sd-scripts make_bucket_resolutions / BucketManager).

Upscale allowed (the default): the bucket set is fixed in advance from the training area
A = W * H. It holds the square (floor(sqrt(A) / d) * d)^2 and, for every width w from
`min_reso` to `max_reso` in steps of d, the pair (w, h) and (h, w) with
h = min(max_reso, floor((A // w) / d) * d) when h >= min_reso. An image goes to the
bucket of its exact size if there is one, else to the bucket whose aspect ratio is
nearest its own; it is scaled to cover the bucket and the excess is cropped.

No upscale (`bucket_no_upscale`): an image larger than A is shrunk to area A (its long or
short side rounded to a multiple of d, whichever keeps the aspect ratio closer); its
bucket is that size rounded down to multiples of d. Smaller images are never enlarged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .images import cover_size


def make_bucket_resolutions(resolution: tuple[int, int], min_reso: int = 256, max_reso: int = 1024,
                            steps: int = 64) -> list[tuple[int, int]]:
    """The predefined (W, H) buckets for a training `resolution`, sorted."""
    area = resolution[0] * resolution[1]
    side = int(math.sqrt(area) // steps) * steps
    resos = {(side, side)}
    for w in range(min_reso, max_reso + 1, steps):
        h = min(max_reso, int((area // w) // steps) * steps)
        if h >= min_reso:
            resos.add((w, h))
            resos.add((h, w))
    return sorted(resos)


@dataclass(frozen=True)
class Placement:
    """Where one image goes: its bucket (W, H), the size it is resized to before the crop,
    and bucket aspect ratio minus image aspect ratio (kohya's ar_error)."""
    bucket: tuple[int, int]
    resized: tuple[int, int]
    ar_error: float


class BucketSet:
    """Assigns image sizes to buckets; `resos` grows with the buckets no-upscale mode creates."""

    def __init__(self, resolution: tuple[int, int], *, enable: bool = True, min_reso: int = 256,
                 max_reso: int = 1024, steps: int = 64, no_upscale: bool = False):
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.enable, self.steps, self.no_upscale = enable, steps, no_upscale and enable
        self.max_area = self.resolution[0] * self.resolution[1]
        if not enable:
            self.predefined = [self.resolution]
        elif self.no_upscale:
            self.predefined = []
        else:
            self.predefined = make_bucket_resolutions(self.resolution, min_reso, max_reso, steps)
        self._predefined_set = set(self.predefined)
        self._ratios = [w / h for w, h in self.predefined]
        self.resos: list[tuple[int, int]] = list(self.predefined)

    def _round(self, x: float) -> int:
        x = int(x + 0.5)
        return x - x % self.steps

    def place(self, size: tuple[int, int]) -> Placement:
        w, h = size
        ar = w / h
        if not self.no_upscale:
            if (w, h) in self._predefined_set:
                bucket = (w, h)
            else:
                i = min(range(len(self._ratios)), key=lambda k: abs(self._ratios[k] - ar))
                bucket = self.predefined[i]
            resized = cover_size(size, bucket)
        else:
            resized = self._no_upscale_size(w, h, ar)
            bucket = (resized[0] - resized[0] % self.steps, resized[1] - resized[1] % self.steps)
            if bucket[0] < self.steps or bucket[1] < self.steps:  # smaller than one step: enlarge it
                bucket = (max(bucket[0], self.steps), max(bucket[1], self.steps))
                resized = cover_size(size, bucket)
        if bucket not in self.resos:
            self.resos.append(bucket)
            self.resos.sort()
        return Placement(bucket, resized, bucket[0] / bucket[1] - ar)

    def _no_upscale_size(self, w: int, h: int, ar: float) -> tuple[int, int]:
        if w * h <= self.max_area:
            return w, h
        rw = math.sqrt(self.max_area * ar)
        rh = self.max_area / rw
        bw = self._round(rw)  # width on the grid, height from the aspect ratio
        ar_w = bw / self._round(bw / ar) if self._round(bw / ar) else math.inf
        bh = self._round(rh)  # height on the grid, width from the aspect ratio
        ar_h = self._round(bh * ar) / bh if bh else math.inf
        if abs(ar_w - ar) < abs(ar_h - ar):
            return bw, int(bw / ar + 0.5)
        return int(bh * ar + 0.5), bh


def crop_ltrb(bucket: tuple[int, int], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """sd-scripts' BucketManager.get_crop_ltrb, the crop SDXL's time ids record: the image of
    (W, H) `size` fitted INSIDE the (W, H) `bucket` (Stability AI's preprocessing), centred;
    left/top floored (float // 2), right/bottom = left/top + the fitted size (unrounded)."""
    (bw, bh), (w, h) = bucket, size
    bucket_ar, image_ar = bw / bh, w / h
    if bucket_ar > image_ar:
        rw, rh = bh * image_ar, bh
    else:
        rw, rh = bw, bw / image_ar
    left, top = (bw - rw) // 2, (bh - rh) // 2
    return left, top, left + rw, top + rh


def crop_top_left(bucket: tuple[int, int], size: tuple[int, int], flipped: bool) -> tuple[int, int]:
    """SDXL's crop conditioning (top, left) of one draw, as sd-scripts records it: int() of
    crop_ltrb's top and left, and for a mirrored draw left = bucket width - right. Whatever
    pixels the actual resize/crop (or random_crop) takes, kohya records this."""
    left, top, right, _ = crop_ltrb(bucket, size)
    return int(top), int(bucket[0] - right if flipped else left)


def bucket_info(resos: list[tuple[int, int]], counts: dict[tuple[int, int], int],
                ar_errors: list[float]) -> dict:
    """ss_bucket_info: {"buckets": {i: {"resolution": [w, h], "count": n}}, "mean_img_ar_error": x}.

    As sd-scripts: i indexes the full sorted bucket list, empty buckets are left out, the
    count includes repeats and the error is the mean |ar_error| over images (not samples).
    """
    out: dict = {"buckets": {}}
    for i, reso in enumerate(resos):
        if counts.get(reso, 0) > 0:
            out["buckets"][i] = {"resolution": [reso[0], reso[1]], "count": counts[reso]}
    out["mean_img_ar_error"] = float(sum(abs(e) for e in ar_errors) / len(ar_errors)) if ar_errors else 0.0
    return out
