"""Data settings checked before a model is loaded (the loop may call validate_data_config early)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config.schema import TrainConfig


def validate_data_config(cfg: "TrainConfig") -> None:
    """Raise ConfigError for data settings that cannot work together."""
    mask_dirs = [s for s in cfg.dataset_subsets if s.get("conditioning_data_dir")]
    if cfg.masked_loss and not cfg.alpha_mask and not mask_dirs:
        raise ConfigError("masked_loss is on but there is no mask: the loss mask is the images' alpha channel "
                          "(alpha_mask) or a mask folder per dataset subset (conditioning_data_dir)",
                          key="masked_loss",
                          fix="set alpha_mask = true (transparent pixels then do not count in the loss), give the "
                              "subsets a conditioning_data_dir of masks named as their images, or remove "
                              "masked_loss")
    if mask_dirs and not cfg.masked_loss:
        raise ConfigError(f"dataset subset '{mask_dirs[0]['image_dir']}' has a conditioning_data_dir (loss masks) "
                          "but masked_loss is off", key="masked_loss",
                          fix="set masked_loss = true to train with those masks, or remove conditioning_data_dir")
    if cfg.validation_split and cfg.validation_data_dir:
        raise ConfigError("validation_split and validation_data_dir are both set", key="validation_split",
                          fix="hold images out of train_data_dir with validation_split, or give a separate "
                              "validation_data_dir, not both")
    _check_cache_vs_pixel_augs(cfg)
    if not cfg.enable_bucket:
        return
    lo, hi, steps = cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps
    if steps % 8:
        raise ConfigError(f"bucket_reso_steps {steps} is not a multiple of 8 (the VAE's downsampling)",
                          key="bucket_reso_steps", fix="use 64 (the default), 32 or another multiple of 8")
    if lo > hi:
        raise ConfigError(f"min_bucket_reso {lo} is larger than max_bucket_reso {hi}", key="min_bucket_reso",
                          fix="set min_bucket_reso <= max_bucket_reso (defaults 256 and 1024)")
    w, h = cfg.resolution
    if not cfg.bucket_no_upscale and (min(w, h) < lo or max(w, h) > hi):
        raise ConfigError(f"resolution {w}x{h} is outside the bucket range {lo}..{hi}", key="resolution",
                          fix=f"set min_bucket_reso <= {min(w, h)} and max_bucket_reso >= {max(w, h)}")


PIXEL_AUGS = ("color_aug", "random_crop")  # change the pixels at each draw: a cached latent cannot carry them


def _check_cache_vs_pixel_augs(cfg: "TrainConfig") -> None:
    """Cached latents are encoded once, so no image may get color_aug or random_crop (sd-scripts
    refuses the same). With dataset_subsets each subset's own value counts (unset = the run's);
    a subset that turns them on is named."""
    if not (cfg.cache_latents or cfg.cache_latents_to_disk):
        return
    cache_key = "cache_latents" if cfg.cache_latents else "cache_latents_to_disk"
    subsets = cfg.dataset_subsets
    # run-level values that some image uses (no subsets, or a subset without its own value)
    on = [k for k, v in cfg.model_dump(include=set(PIXEL_AUGS)).items() if v]
    run_level = [k for k in PIXEL_AUGS if k in on and (not subsets or any(s.get(k) is None for s in subsets))]
    if run_level:
        augs = " and ".join(run_level)
        raise ConfigError(f"{cache_key} and {augs} are both on: {', '.join(run_level)} changes the image each "
                          "time it is used, but cached latents are encoded once", key=run_level[0],
                          fix=f"set {cache_key} = false (and cache_latents_to_disk = false) to keep {augs}, or "
                              f"turn {augs} off to cache (flip_aug works with a cache)")
    for i, sub in enumerate(subsets):
        own = [k for k in PIXEL_AUGS if sub.get(k)]
        if own:
            augs = " and ".join(own)
            raise ConfigError(f"{cache_key} is on but dataset subset {i} ('{sub.get('image_dir')}') has {augs}: "
                              "it changes the image each time it is used, but cached latents are encoded once",
                              key=own[0], fix=f"set {cache_key} = false (and cache_latents_to_disk = false) to "
                                              f"keep {augs} for that subset, or turn it off there to cache "
                                              "(flip_aug works with a cache)")
