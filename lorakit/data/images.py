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


READ_FIX = "replace the file with a valid PNG/JPEG/WEBP/BMP image or delete it"
_ORIENTATION = 0x0112


def _unreadable(path: str | Path, e: Exception) -> DataError:
    msg = "is empty (0 bytes)" if Path(path).is_file() and Path(path).stat().st_size == 0 else \
        f"cannot be read as an image ({e.__class__.__name__}: {e})"
    return DataError(msg, file=str(path), fix=READ_FIX)


def probe_image(path: str | Path) -> tuple[int, int]:
    """Upright (W, H) of an image, decoding it fully so that corrupt and truncated files are
    found now rather than mid-run (JPEGs are decoded at reduced scale: fast, still complete).
    Raises DataError for a file that cannot be used."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            orient = im.getexif().get(_ORIENTATION, 1)
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    if w < 1 or h < 1:
        raise DataError("has no pixels", file=str(path), fix=READ_FIX)
    return (h, w) if orient in (5, 6, 7, 8) else (w, h)


def load_image_rgb(path: str | Path) -> Image.Image:
    """Open an image upright (EXIF orientation applied) as RGB; transparency over white.

    Any PIL mode: CMYK, palette (with transparency), L/LA, RGBA, 1-bit, and 16/32-bit
    integer or float images (scaled to 0..255 rather than clipped, as PIL's convert would).
    """
    im = _open_upright(path)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def load_image_rgb_alpha(path: str | Path) -> tuple[Image.Image, Image.Image | None]:
    """For alpha_mask: the RGB channels as stored (NOT composited, as sd-scripts' load_image with
    alpha) and the alpha channel as an 'L' image, or None when the image has no transparency."""
    im = _open_upright(path)
    if not _has_alpha(im):
        return (im if im.mode == "RGB" else im.convert("RGB")), None
    rgba = im.convert("RGBA")
    r, g, b, a = rgba.split()
    return Image.merge("RGB", (r, g, b)), a


def load_mask_plane(path: str | Path) -> Image.Image:
    """A masked_loss mask file (conditioning_data_dir) as an 'L' plane: the red channel of the image
    read as RGB (sd-scripts' conditioning image, R / 255 in [0, 1]); grayscale files give their value."""
    return _open_upright(path).convert("RGB").getchannel("R")


def _open_upright(path: str | Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise _unreadable(path, e) from None
    if im.mode.startswith("I") or im.mode == "F":
        im = _high_depth_to_l(im)
    return im


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """I;16 / I / F -> L: 16-bit data (max > 255) scaled by 255 / 65535, floats in 0..1 by 255."""
    a = np.asarray(im).astype(np.float64)
    if im.mode == "F" and a.size and a.max() <= 1.0:
        a = a * 255.0
    elif a.size and a.max() > 255:
        a = a * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def cover_size(src: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """Smallest aspect-preserving size of `src` (W, H) covering `target` (W, H), kohya rounding."""
    (w, h), (tw, th) = src, target
    scale = th / h if w / h > tw / th else tw / w
    return max(tw, int(w * scale + 0.5)), max(th, int(h * scale + 0.5))


def resize_center_crop(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Scale `img` to cover `size` = (W, H), crop the centre; uint8 array of shape (H, W, 3)."""
    return resize_crop(img, cover_size(img.size, size), size)


def center_offset(resized: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(left, top) of the centre crop: the excess split evenly, the odd pixel on the right/bottom."""
    return (resized[0] - size[0]) // 2, (resized[1] - size[1]) // 2


def resize_crop(img: Image.Image, resized: tuple[int, int], size: tuple[int, int],
                offset: tuple[int, int] | None = None, *, plane: bool = False) -> np.ndarray:
    """Resize `img` to `resized` (BOX when shrinking, LANCZOS otherwise) and cut `size` = (W, H)
    at `offset` = (left, top), the centre when None; uint8 (H, W, 3) (plane=True: the single
    plane of an 'L' image, (H, W))."""
    (rw, rh), (tw, th) = resized, size
    if rw < tw or rh < th:
        raise ValueError(f"resized {rw}x{rh} does not cover {tw}x{th}")
    if (rw, rh) != img.size:
        shrink = img.width >= rw and img.height >= rh
        img = img.resize((rw, rh), resample=Image.Resampling.BOX if shrink else Image.Resampling.LANCZOS)
    left, top = center_offset(resized, size) if offset is None else offset
    arr = np.asarray(img if plane else img.convert("RGB"), dtype=np.uint8)
    return arr[top:top + th, left:left + tw].copy()


def resize_crop_alpha(alpha: Image.Image, resized: tuple[int, int], size: tuple[int, int],
                      offset: tuple[int, int] | None = None) -> np.ndarray:
    """resize_crop of an alpha plane ('L'), resized on its own (no premultiplication): uint8 (H, W)."""
    return resize_crop(alpha.convert("L"), resized, size, offset, plane=True)


def latent_mask(alpha: np.ndarray | None, size: tuple[int, int], factor: int = 8) -> torch.Tensor:
    """A loss mask (1, H/f, W/f) float32 in [0, 1] from a cropped uint8 alpha plane (H, W): each
    value is the mean of alpha / 255 over its f x f block (area averaging, F.interpolate's
    mode="area" as sd-scripts' masked loss). None (no alpha channel): all ones. size = (W, H)."""
    w, h = size
    if alpha is None:
        return torch.ones((1, h // factor, w // factor), dtype=torch.float32)
    a = torch.from_numpy(np.asarray(alpha, dtype=np.float32) / 255.0)
    if a.shape != (h, w):
        raise ValueError(f"alpha of shape {tuple(a.shape)} is not {h}x{w}")
    return a.reshape(h // factor, factor, w // factor, factor).mean(dim=(1, 3)).unsqueeze(0).contiguous()


def to_tensor(np_img: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [-1, 1] (x / 127.5 - 1, as ToTensor + Normalize(0.5, 0.5))."""
    t = torch.from_numpy(np.array(np_img, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return t / 127.5 - 1.0


def load_training_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """load_image_rgb + resize_center_crop + to_tensor: a (3, H, W) tensor in [-1, 1]."""
    return to_tensor(resize_center_crop(load_image_rgb(path), size))
