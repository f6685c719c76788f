"""The data keys of the training schema: images, captions, buckets, latent and text caches, validation images."""
from __future__ import annotations

import difflib
from typing import Annotated, Any, Optional

from pydantic import BaseModel, TypeAdapter, ValidationError, field_validator

from ..checks import parse_resolution
from ..fields import RESUME_SAFE, F

# Caption and augmentation keys a dataset_subsets entry may set for its own images (sd-scripts'
# subset-level options); a subset without the key uses the run's value.
SUBSET_OPTIONS = ("shuffle_caption", "keep_tokens", "keep_tokens_separator", "caption_prefix", "caption_suffix",
                  "caption_dropout_rate", "caption_dropout_every_n_epochs", "caption_tag_dropout_rate",
                  "flip_aug", "color_aug", "random_crop")
SUBSET_KEYS = ("image_dir", "num_repeats", "class_tokens", "caption_extension", "is_reg",
               "conditioning_data_dir") + SUBSET_OPTIONS


class DataKeys(BaseModel):
    train_data_dir: Optional[str] = F(
        None, "Folder of kohya subfolders named <repeats>_<name> holding images and captions.",
        resume=RESUME_SAFE)
    reg_data_dir: Optional[str] = F(None, "Regularization images, same folder layout.", resume=RESUME_SAFE)
    resolution: tuple[int, int] = F((512, 512), "Training size 'W,H' or one number for square.",
                                    ss="ss_resolution", dataset_key="resolution")
    caption_extension: str = F(".txt", "Caption file extension, next to each image.")
    shuffle_caption: bool = F(False, "Shuffle comma-separated tags each time a caption is used.",
                              ss="ss_shuffle_caption")
    keep_tokens: int = F(0, "Keep the first N comma-separated tags in place when shuffling.", ge=0,
                         ss="ss_keep_tokens")
    cache_latents: bool = F(True, "Encode every image with the VAE once, before training.",
                            ss="ss_cache_latents")
    vae_batch_size: int = F(1, "Batch size of the latent caching pass.", ge=1, gui_unset=(0,))
    cache_text_encoder_outputs: Optional[bool] = F(
        None, "Reuse the text encoder's output for a caption string seen before (exact also with "
        "shuffled or dropped captions; the key is the string trained with), in up to 256 MB on the training "
        "device. When all the run's caption strings can be listed before it starts and fit, they are encoded "
        "first and the text encoders wait on the host (as sd-scripts frees them). Unset: on when the text "
        "encoder is not trained (text_encoder_lr = 0 or network_train_unet_only); true with a trained text "
        "encoder is an error.", resume=RESUME_SAFE)
    max_data_loader_n_workers: int = F(
        0, "DataLoader worker processes that decode batches ahead of their step (0 = the main process "
        "builds each batch when its step comes). Same results either way.", ge=0, resume=RESUME_SAFE)
    persistent_data_loader_workers: bool = F(False, "Keep DataLoader workers alive between epochs.",
                                             resume=RESUME_SAFE)
    prior_loss_weight: float = F(1.0, "Loss weight of regularization images.", ge=0, ss="ss_prior_loss_weight")
    cache_latents_to_disk: bool = F(
        False, "Keep cached latents in <image>_<W>x<H>_sd.npz files; re-encoded when the image, "
        "size or VAE changes.")
    enable_bucket: bool = F(False, "Aspect-ratio buckets: each image trains near its own aspect ratio.",
                            ss="ss_enable_bucket", dataset_key="enable_bucket")
    min_bucket_reso: int = F(256, "Smallest bucket side (with enable_bucket).", ge=64, ss="ss_min_bucket_reso",
                             dataset_key="min_bucket_reso")
    max_bucket_reso: int = F(1024, "Largest bucket side (with enable_bucket).", ge=64, ss="ss_max_bucket_reso",
                             dataset_key="max_bucket_reso")
    bucket_reso_steps: int = F(64, "Bucket sides are multiples of this (a multiple of 8).", ge=8,
                               dataset_key="bucket_reso_steps", gui_unset=(0, 1))
    bucket_no_upscale: bool = F(False, "Never enlarge images: small images get small buckets.",
                                ss="ss_bucket_no_upscale", dataset_key="bucket_no_upscale")
    caption_prefix: str = F("", "Text put before every caption (joined with a space).")
    caption_suffix: str = F("", "Text put after every caption (joined with a space).")
    keep_tokens_separator: str = F(
        "", "Tags before this mark stay in place, tags after it are shuffled (e.g. '|||').")
    caption_dropout_rate: float = F(0.0, "Chance of training an image with an empty caption.", ge=0, le=1,
                                    ss="ss_caption_dropout_rate")
    caption_dropout_every_n_epochs: int = F(
        0, "Empty captions for the whole epoch when epoch % N == 0 (epochs count from 1; 0 = off).", ge=0,
        ss="ss_caption_dropout_every_n_epochs")
    caption_tag_dropout_rate: float = F(
        0.0, "Chance of leaving out each movable tag (after keep_tokens).", ge=0, le=1,
        ss="ss_caption_tag_dropout_rate")
    flip_aug: bool = F(False, "Mirror images left-right half of the time (works with cached latents).",
                       ss="ss_flip_aug")
    color_aug: bool = F(False, "Small random hue or gamma change (not with cached latents).", ss="ss_color_aug")
    random_crop: bool = F(False, "Crop at a random place instead of the centre (not with cached latents).",
                          ss="ss_random_crop")
    alpha_mask: bool = F(
        False, "Use each image's alpha channel as a loss mask (transparent pixels do not count; the RGB "
        "is not composited on white); images without alpha count everywhere.", ss="ss_alpha_mask")
    masked_loss: bool = F(
        False, "kohya's masked loss: the loss counts each latent pixel by its mask value. The mask is the "
        "red channel of the same-named image in the subset's conditioning_data_dir (dataset_subsets), else the "
        "alpha channel (alpha_mask); needs one of them.")
    weighted_captions: bool = F(
        False, "Read kohya's attention syntax in captions: (word) x1.1, [word] /1.1, (word:1.3) x1.3, "
        "nested ones multiply, \\( \\) \\[ \\] literal; the text-encoder output of each token is scaled by "
        "its weight. No commas inside brackets when captions are shuffled or dropped.")
    validation_split: float = F(
        0.0, "Fraction of each train folder's images held out of training for a validation loss "
        "(chosen by validation_seed); 0 = off.", ge=0, lt=1, ss="ss_validation_split", dataset_key="validation_split")
    validation_seed: Optional[int] = F(None, "Seed that picks the validation_split images (unset = seed).",
                                       ge=0, ss="ss_validation_seed", dataset_key="validation_seed")
    validation_data_dir: Optional[str] = F(
        None, "Validation images in a separate folder, same <repeats>_<name> layout (repeats ignored).")
    validate_every_n_epochs: Optional[int] = F(
        None, "Compute the validation loss every N epochs (unset = every epoch when validation is on).",
        ge=1, resume=RESUME_SAFE, ss="ss_validate_every_n_epochs")
    validate_every_n_steps: Optional[int] = F(
        None, "Also compute the validation loss every N optimizer steps (sd-scripts: at steps N, 2N, ...); "
        "unset or 0 = only per epoch.", ge=1, resume=RESUME_SAFE)
    max_validation_steps: Optional[int] = F(
        None, "Use at most this many validation batches (the first ones, in a fixed order) per "
        "validation; unset or 0 = all.", ge=1, resume=RESUME_SAFE)
    dataset_subsets: list[dict[str, Any]] = F(
        [], "Explicit image folders instead of train_data_dir/reg_data_dir (what an sd-scripts "
        "dataset_config gives): each {image_dir, num_repeats, class_tokens, caption_extension, is_reg} and "
        "optionally its own caption/augmentation keys (shuffle_caption, keep_tokens, keep_tokens_separator, "
        "caption_prefix, caption_suffix, caption_dropout_rate, caption_dropout_every_n_epochs, "
        "caption_tag_dropout_rate, flip_aug, color_aug, random_crop; unset = the run's value) and "
        "conditioning_data_dir (the masked_loss masks of its images).")

    @field_validator("resolution", mode="before")
    @classmethod
    def _resolution(cls, v: Any) -> Any:
        return parse_resolution(v)

    @field_validator("resolution")
    @classmethod
    def _resolution_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        for n in v:
            if n < 64 or n % 8:
                raise ValueError(f"{n} must be a multiple of 8 and at least 64")
        return v

    @field_validator("dataset_subsets")
    @classmethod
    def _subsets(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for i, sub in enumerate(v):
            for k in sub:
                if k not in SUBSET_KEYS:
                    guess = difflib.get_close_matches(k, SUBSET_KEYS, n=1, cutoff=0.6)
                    hint = f"did you mean '{guess[0]}'?" if guess else f"allowed: {', '.join(SUBSET_KEYS)}"
                    raise ValueError(f"subset {i}: unknown key '{k}'; {hint}")
            if not sub.get("image_dir"):
                raise ValueError(f"subset {i} has no image_dir")
            reps = sub.get("num_repeats", 1)
            if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
                raise ValueError(f"subset {i}: num_repeats must be an integer of 1 or more (got {reps!r})")
            ext = str(sub.get("caption_extension", ".caption"))
            cond = sub.get("conditioning_data_dir")
            entry = {"image_dir": str(sub["image_dir"]), "num_repeats": reps,
                     "class_tokens": str(sub.get("class_tokens") or ""),
                     "caption_extension": ext if ext.startswith(".") or ext == "" else "." + ext,
                     "is_reg": bool(sub.get("is_reg", False))}
            if cond:  # masked_loss masks, one per image, same file name (sd-scripts' ControlNet subset key)
                entry["conditioning_data_dir"] = str(cond)
            for k in SUBSET_OPTIONS:  # checked against the run-level field: same type and range
                if k in sub:
                    field = cls.model_fields[k]
                    try:
                        entry[k] = TypeAdapter(Annotated[field.annotation, field]).validate_python(sub[k])
                    except ValidationError as e:
                        raise ValueError(f"subset {i}: {k}: {e.errors()[0]['msg']} (got {sub[k]!r})") from None
            out.append(entry)
        return out

    @field_validator("caption_extension")
    @classmethod
    def _caption_ext(cls, v: str) -> str:
        return v if v.startswith(".") or v == "" else "." + v
