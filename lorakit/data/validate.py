"""Data settings checked before a model is loaded (the loop may call validate_data_config early)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config.schema import TrainConfig


def validate_data_config(cfg: "TrainConfig") -> None:
    """Raise ConfigError for data settings that cannot work together."""
    g = lambda k, d=None: getattr(cfg, k, d)  # noqa: E731
    if g("masked_loss", False) and not g("alpha_mask", False):
        raise ConfigError("masked_loss is on but there is no mask: lorakit takes the loss mask from the "
                          "images' alpha channel (alpha_mask); sd-scripts' conditioning_data_dir masks are "
                          "not supported", key="masked_loss",
                          fix="set alpha_mask = true (transparent pixels then do not count in the loss), "
                              "or remove masked_loss")
    if g("validation_split", 0.0) and g("validation_data_dir", None):
        raise ConfigError("validation_split and validation_data_dir are both set", key="validation_split",
                          fix="hold images out of train_data_dir with validation_split, or give a separate "
                              "validation_data_dir, not both")
    caching = bool(g("cache_latents", False) or g("cache_latents_to_disk", False))
    pixel_augs = [k for k in ("color_aug", "random_crop") if g(k, False)]
    if caching and pixel_augs:
        cache_key = "cache_latents" if g("cache_latents", False) else "cache_latents_to_disk"
        both = f"{cache_key} and {' and '.join(pixel_augs)}"
        raise ConfigError(f"{both} are both on: {', '.join(pixel_augs)} changes the image each time it is "
                          "used, but cached latents are encoded once", key=pixel_augs[0],
                          fix=f"set {cache_key} = false (and cache_latents_to_disk = false) to keep "
                              f"{' and '.join(pixel_augs)}, or turn {' and '.join(pixel_augs)} off to cache "
                              "(flip_aug works with a cache)")
    if not g("enable_bucket", False):
        return
    lo, hi, steps = g("min_bucket_reso", 256), g("max_bucket_reso", 1024), g("bucket_reso_steps", 64)
    if steps % 8:
        raise ConfigError(f"bucket_reso_steps {steps} is not a multiple of 8 (the VAE's downsampling)",
                          key="bucket_reso_steps", fix="use 64 (the default), 32 or another multiple of 8")
    if lo > hi:
        raise ConfigError(f"min_bucket_reso {lo} is larger than max_bucket_reso {hi}", key="min_bucket_reso",
                          fix="set min_bucket_reso <= max_bucket_reso (defaults 256 and 1024)")
    w, h = cfg.resolution
    if not g("bucket_no_upscale", False) and (min(w, h) < lo or max(w, h) > hi):
        raise ConfigError(f"resolution {w}x{h} is outside the bucket range {lo}..{hi}", key="resolution",
                          fix=f"set min_bucket_reso <= {min(w, h)} and max_bucket_reso >= {max(w, h)}")
