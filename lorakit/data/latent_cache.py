"""Latent cache entries: encode, sample reproducibly, and store on disk with a validity key.

An entry is the VAE's latent distribution (mean, std) of one image at one geometry
(bucket, resized size, crop), plus that of the mirrored image when flip_aug is on. The
latent used in training is one sample `mean + std * randn`, the noise drawn from a
generator seeded by (seed, image content, flip): the same image gives the same latent
whatever the batch size, the order or whether it came from disk.

On disk (cache_latents_to_disk) the entry is `<stem>_<W:04d>x<H:04d>_sd.npz` next to the
image (sd-scripts' name) holding `mean`, `std` (and `mean_flipped`, `std_flipped`) and
`lorakit_key`: a sha256 of the image bytes, the geometry, the VAE's identity and alpha_mask
(with alpha_mask the entry also holds `alpha_mask`, the loss mask at latent resolution). An entry
whose key differs (image edited, other resolution/bucket/crop, other VAE) is re-encoded;
sd-scripts would silently reuse it. sd-scripts itself ignores these files (no `latents`).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("lorakit.data")
FORMAT = "lorakit-latents-1"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def vae_identity(vae, dtype: torch.dtype) -> str:
    """A short hash of the VAE's class, config, encode dtype and weights (a checksum of every
    tensor plus its first values), so a cache made by another VAE is not reused."""
    h = hashlib.sha256(type(vae).__name__.encode())
    config = getattr(vae, "config", None)
    if config is not None:
        h.update(json.dumps(dict(config), sort_keys=True, default=str).encode())
    h.update(str(dtype).encode())
    with torch.no_grad():
        for name, t in vae.state_dict().items():
            flat = t.detach().reshape(-1)
            h.update(name.encode())
            h.update(flat[:16].float().cpu().numpy().tobytes())
            h.update(np.float64(flat.double().sum().item()).tobytes())
    return h.hexdigest()[:16]


def disk_path(image: str | Path, bucket: tuple[int, int]) -> Path:
    """sd-scripts' cache file name: `<stem>_<W:04d>x<H:04d>_sd.npz` next to the image."""
    p = Path(image)
    return p.with_name(f"{p.stem}_{bucket[0]:04d}x{bucket[1]:04d}_sd.npz")


STALE_TMP_AGE_S = 600.0  # a cache entry is written in milliseconds: a temporary this old lost its writer


def clean_stale_temporaries(images: list[Path], max_age_s: float = STALE_TMP_AGE_S) -> list[str]:
    """Remove the hidden `.<stem>_<W>x<H>_sd.npz.<random>.tmp` files that a run killed while writing
    its disk cache left next to the images. Only cache temporaries, and only old ones: another run
    that shares the data folder may be writing its own right now. Returns the names removed."""
    import time

    removed, now = [], time.time()
    for folder in sorted({p.parent for p in images}):
        try:
            entries = list(folder.glob(".*_sd.npz.*.tmp"))
        except OSError:
            continue
        for tmp in entries:
            try:
                if tmp.is_file() and now - tmp.stat().st_mtime > max_age_s:
                    tmp.unlink()
                    removed.append(tmp.name)
            except OSError:  # gone already, or not ours to remove: leave it
                continue
    return removed


def entry_key(image_hash: str, bucket: tuple[int, int], resized: tuple[int, int],
              crop: tuple[int, int], vae_id: str, alpha_mask: bool = False) -> str:
    """alpha_mask: the pixels were not composited on white (and the entry holds the mask), so an
    entry of the other kind never matches."""
    desc = {"format": FORMAT, "image": image_hash, "bucket": list(bucket), "resized": list(resized),
            "crop": list(crop), "vae": vae_id}
    if alpha_mask:
        desc["alpha_mask"] = True
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()


@dataclass
class Moments:
    mean: torch.Tensor  # (4, h, w) float32
    std: torch.Tensor
    mean_flipped: torch.Tensor | None = None
    std_flipped: torch.Tensor | None = None
    mask: torch.Tensor | None = None  # (1, h, w) alpha at latent resolution (alpha_mask), unflipped


def noise_seed(seed: int, image_hash: str, flipped: bool) -> int:
    d = hashlib.sha256(f"{seed}:{image_hash}:{int(flipped)}".encode()).digest()
    return int.from_bytes(d[:8], "little") & ((1 << 63) - 1)


def sample(mean: torch.Tensor, std: torch.Tensor, seed: int, image_hash: str, flipped: bool) -> torch.Tensor:
    """One latent sample, as DiagonalGaussianDistribution.sample with a per-image generator."""
    gen = torch.Generator().manual_seed(noise_seed(seed, image_hash, flipped))
    return mean + std * torch.randn(mean.shape, generator=gen, dtype=torch.float32)


def load_entry(path: Path, key: str, need_flip: bool, need_mask: bool = False) -> Moments | None:
    """The stored moments when `path` exists and was written for `key` (with flipped moments
    when needed); None otherwise (missing, stale or unreadable: it is re-encoded)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if "lorakit_key" not in z.files or str(z["lorakit_key"]) != key:
                return None
            if (need_flip and "mean_flipped" not in z.files) or (need_mask and "alpha_mask" not in z.files):
                return None
            m = Moments(torch.from_numpy(z["mean"].astype(np.float32)), torch.from_numpy(z["std"].astype(np.float32)))
            if need_flip:
                m.mean_flipped = torch.from_numpy(z["mean_flipped"].astype(np.float32))
                m.std_flipped = torch.from_numpy(z["std_flipped"].astype(np.float32))
            if need_mask:
                m.mask = torch.from_numpy(z["alpha_mask"].astype(np.float32))
            return m
    except (OSError, ValueError, KeyError) as e:
        log.warning("%s: unreadable latent cache, re-encoding (%s)", path, e)
        return None


def save_entry(path: Path, key: str, m: Moments) -> None:
    arrays = {"mean": m.mean.numpy(), "std": m.std.numpy(), "lorakit_key": np.array(key)}
    if m.mean_flipped is not None:
        arrays["mean_flipped"] = m.mean_flipped.numpy()
        arrays["std_flipped"] = m.std_flipped.numpy()
    if m.mask is not None:
        arrays["alpha_mask"] = m.mask.numpy()
    from ..io import atomic_path

    with atomic_path(path, need=sum(a.nbytes for a in arrays.values()) + 4096) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would add ".npz" to a name
            np.savez(fh, **arrays)
