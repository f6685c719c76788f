"""Image loading and the resize/crop to a training size, with PIL and numpy only.

kohya's rule (train_util.trim_and_resize_if_required with a bucket): scale the image so it
covers the target W x H keeping its aspect ratio (size rounded with int(x + 0.5)), with
AREA when shrinking and LANCZOS otherwise, then cut the excess evenly from both sides
(offset = excess // 2). PIL's BOX filter is the area average (cv2.INTER_AREA).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError


def load_image_rgb(path: str | Path) -> Image.Image:
    """Open an image upright (EXIF orientation applied) as RGB; transparency over white."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot be read as an image ({e.__class__.__name__}: {e})", file=str(path),
                        fix="replace the file with a valid PNG/JPEG/WEBP/BMP image or delete it") from None
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def cover_size(src: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Smallest aspect-preserving size of `src` (W, H) covering `target` (W, H), kohya rounding."""
    (w, h), (tw, th) = src, target
    scale = th / h if w / h > tw / th else tw / w
    return max(tw, int(w * scale + 0.5)), max(th, int(h * scale + 0.5))


def resize_center_crop(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Scale `img` to cover `size` = (W, H), crop the centre; uint8 array of shape (H, W, 3)."""
    tw, th = size
    rw, rh = cover_size(img.size, size)
    if (rw, rh) != img.size:
        shrink = img.width >= rw and img.height >= rh
        img = img.resize((rw, rh), resample=Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)
    left, top = (rw - tw) // 2, (rh - th) // 2
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return arr[top:top + th, left:left + tw].copy()


def to_tensor(np_img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1] (x / 127.5 - 1, as ToTensor + Normalize(0.5, 0.5))."""
    t = torch.from_numpy(np.array(np_img, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return t / 127.5 - 1.0


def load_training_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """load_image_rgb + resize_center_crop + to_tensor: a (3, H, W) tensor in [-1, 1]."""
    return to_tensor(resize_center_crop(load_image_rgb(path), size))
