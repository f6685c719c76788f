"""The training dataset: samples (images x repeats), buckets, the latent cache and seeded epochs.

One epoch draws every image `repeats` times, as kohya. Each image is placed in a bucket
(:mod:`.buckets`; without enable_bucket the one bucket is the configured resolution) and
batches are planned the way sd-scripts plans them: the samples of each bucket are cut
into ceil(n / batch_size) batches (the last one may be short), so a batch's images share
a size; each epoch the order is shuffled with a generator seeded by seed + epoch.

Unlike sd-scripts (which reshuffles the previous epoch's order), every epoch is shuffled
from the same canonical order, so epoch k's batches depend only on (seed, k): a resumed
run sees the batches an uninterrupted one would have. Per-draw randomness (caption
shuffle/dropout, flip, colour, crop) is seeded by (seed, epoch, sample id). The caption and
augmentation options are the run's, replaced key by key by an image's subset settings
(ImageItem.settings, from dataset_subsets: sd-scripts' subset > dataset > general order).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import torch

from ..errors import DataError
from .augment import AugmentOptions, Draw, apply_pixels, draw_augmentation
from .buckets import BucketSet, Placement, bucket_info, crop_top_left
from .captions import CaptionOptions
from .folders import DatasetIndex, ImageItem, scan_config, scan_folders
from .images import (center_offset, latent_mask, load_image_rgb, load_image_rgb_alpha, load_mask_plane, probe_image,
                     resize_crop, resize_crop_alpha, to_tensor)
from .latent_cache import (Moments, clean_stale_temporaries, disk_path, entry_key, file_sha256, load_entry, sample,
                           save_entry, vae_identity)
from .validate import validate_data_config

if TYPE_CHECKING:
    from ..config.schema import TrainConfig

VAE_DOWNSAMPLE = 8


@dataclass
class Batch:
    captions: list[str]
    loss_weights: torch.Tensor  # (B,) float32: prior_loss_weight for reg samples, 1.0 otherwise
    is_reg: list[bool]
    latents: torch.Tensor | None = None  # (B, 4, H/8, W/8) float32, unscaled VAE samples
    pixels: torch.Tensor | None = None  # (B, 3, H, W) float32 in [-1, 1] when latents are not cached
    item_indices: list[int] = field(default_factory=list)  # index into DatasetIndex.items
    flipped: list[bool] = field(default_factory=list)  # flip_aug decision of each sample
    bucket: tuple[int, int] | None = None  # (W, H) shared by the batch
    # alpha_mask: (B, 1, H/8, W/8) float32 loss weights in [0, 1] (alpha, area-averaged to the
    # latent's size, flipped with it); None without alpha_mask
    masks: torch.Tensor | None = None
    # SDXL's size conditioning: each image's (W, H) before any resize, and the (top, left) crop
    # sd-scripts records for it in the bucket (buckets.crop_top_left; the target size is `bucket`)
    original_sizes: list[tuple[int, int]] = field(default_factory=list)
    crop_top_lefts: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.captions)

    def pin_memory(self) -> "Batch":
        """A copy with page-locked tensors (DataLoader(pin_memory=True) calls this on CUDA runs)."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return replace(self, loss_weights=pin(self.loss_weights), latents=pin(self.latents),
                       pixels=pin(self.pixels), masks=pin(self.masks))


class TrainDataset:
    def __init__(self, index: DatasetIndex, resolution: tuple[int, int], *, shuffle_caption: bool = False,
                 keep_tokens: int = 0, prior_loss_weight: float = 1.0, caption_options: CaptionOptions | None = None,
                 buckets: BucketSet | None = None, augment: AugmentOptions | None = None,
                 cache_to_disk: bool = False, alpha_mask: bool = False):
        w, h = resolution
        if w % VAE_DOWNSAMPLE or h % VAE_DOWNSAMPLE:
            raise ValueError(f"resolution {w}x{h} must be a multiple of {VAE_DOWNSAMPLE}")
        self.index = index
        self.items: list[ImageItem] = index.items
        self.resolution = (int(w), int(h))
        self.caption_options = caption_options or CaptionOptions(shuffle=shuffle_caption, keep_tokens=keep_tokens)
        self.prior_loss_weight = float(prior_loss_weight)
        self.augment = augment or AugmentOptions()
        # per item: the run's options with its subset's own values
        self.item_captions = [self.caption_options.override(it.settings) for it in self.items]
        self.item_augment = [self.augment.override(it.settings) for it in self.items]
        self.cache_to_disk = cache_to_disk
        self.alpha_mask = bool(alpha_mask)
        # loss masks: alpha channels, or mask files of subsets with a conditioning_data_dir
        self.masked = self.alpha_mask or any(it.mask_path is not None for it in self.items)
        self.buckets = buckets or BucketSet(self.resolution, enable=False)
        self.sizes: list[tuple[int, int]] = [it.size or probe_image(it.path) for it in self.items]  # (W, H)
        self.placements: list[Placement] = [self.buckets.place(size) for size in self.sizes]
        # canonical sample list: item i appears items[i].repeats times, items in index order
        self.samples: list[int] = [i for i, it in enumerate(self.items) for _ in range(it.repeats)]
        by_reso: dict[tuple[int, int], list[int]] = {}
        for s, i in enumerate(self.samples):
            by_reso.setdefault(self.placements[i].bucket, []).append(s)
        self.bucket_resos = sorted(by_reso)
        self._buckets: list[list[int]] = [by_reso[r] for r in self.bucket_resos]  # sample ids per bucket
        self._latents: list[torch.Tensor] | None = None
        self._latents_flipped: list[torch.Tensor] | None = None
        self._masks: list[torch.Tensor] | None = None  # (1, h, w) per item, unflipped (alpha_mask)
        self.cache_stats = {"encoded": 0, "from_disk": 0}
        self.removed_temporaries: list[str] = []

    @classmethod
    def from_config(cls, cfg: "TrainConfig", index: DatasetIndex | None = None,
                    seed: int | None = None) -> "TrainDataset":
        """The training dataset of `cfg`. The validation images (validation_split /
        validation_data_dir) are taken out of `index` first, in place (see apply_validation),
        so the index's counts, the plan and the metadata all see the split. `seed`: the run's
        seed, the default of validation_seed."""
        validate_data_config(cfg)
        if index is None:
            index = scan_config(cfg)
        apply_validation(cfg, index, seed)
        captions = CaptionOptions(
            shuffle=cfg.shuffle_caption, keep_tokens=cfg.keep_tokens, keep_tokens_separator=cfg.keep_tokens_separator,
            prefix=cfg.caption_prefix, suffix=cfg.caption_suffix, dropout_rate=cfg.caption_dropout_rate,
            dropout_every_n_epochs=cfg.caption_dropout_every_n_epochs, tag_dropout_rate=cfg.caption_tag_dropout_rate)
        buckets = BucketSet(cfg.resolution, enable=cfg.enable_bucket, min_reso=cfg.min_bucket_reso,
                            max_reso=cfg.max_bucket_reso, steps=cfg.bucket_reso_steps, no_upscale=cfg.bucket_no_upscale)
        augment = AugmentOptions(flip_aug=cfg.flip_aug, color_aug=cfg.color_aug, random_crop=cfg.random_crop)
        return cls(index, cfg.resolution, prior_loss_weight=cfg.prior_loss_weight, caption_options=captions,
                   buckets=buckets, augment=augment, cache_to_disk=cfg.cache_latents_to_disk, alpha_mask=cfg.alpha_mask)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of a latent at the training resolution (a bucket's may differ)."""
        return self.resolution[1] // VAE_DOWNSAMPLE, self.resolution[0] // VAE_DOWNSAMPLE

    @property
    def latents_cached(self) -> bool:
        return self._latents is not None

    def num_batches_per_epoch(self, batch_size: int) -> int:
        """Sum over buckets of ceil(samples / batch_size) (kohya's len(train_dataloader))."""
        return sum(math.ceil(len(b) / batch_size) for b in self._buckets)

    def bucket_info(self) -> dict:
        """ss_bucket_info (see buckets.bucket_info); counts include repeats."""
        counts = {r: len(b) for r, b in zip(self.bucket_resos, self._buckets)}
        return bucket_info(self.buckets.resos, counts, [p.ar_error for p in self.placements])

    # ---- latent cache ------------------------------------------------------------------
    def cache_latents(self, vae, *, batch_size: int = 1, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> None:
        """Encode each unique image once (and its mirror when its subset has flip_aug), batched per bucket.

        The latent is `mean + std * randn` of the VAE's latent distribution with noise from
        a generator seeded by (seed, image content, flip), stored unscaled (the loop
        multiplies by vae.config.scaling_factor) as float32 on the CPU. With cache_to_disk,
        valid .npz entries are read instead of encoded and new ones written.
        `progress(done, total)` is called after each VAE batch.
        """
        device = torch.device(device)
        by_path: dict[Path, list[int]] = {}
        for i, it in enumerate(self.items):
            by_path.setdefault(Path(it.path), []).append(i)
        paths = list(by_path)
        # the mirror is encoded only for images that can be drawn flipped (flip_aug of their subset)
        flips = {p: any(self.item_augment[i].flip_aug for i in by_path[p]) for p in paths}
        hashes = {p: file_sha256(p) for p in paths}
        vae_id = vae_identity(vae, dtype) if self.cache_to_disk else ""
        moments: dict[Path, Moments] = {}
        todo: dict[tuple[int, int], list[Path]] = {}
        keys: dict[Path, str] = {}
        for p in paths:
            pl = self.placements[by_path[p][0]]
            if self.cache_to_disk:
                keys[p] = entry_key(hashes[p], pl.bucket, pl.resized, center_offset(pl.resized, pl.bucket), vae_id,
                                    self.alpha_mask)
                got = load_entry(disk_path(p, pl.bucket), keys[p], flips[p], self.alpha_mask)
                if got is not None:
                    moments[p] = got
                    continue
            todo.setdefault(pl.bucket, []).append(p)
        self.cache_stats = {"encoded": sum(map(len, todo.values())), "from_disk": len(moments)}
        # what a run killed mid-write left beside the images (names, for the caller to report)
        self.removed_temporaries = clean_stale_temporaries(paths) if self.cache_to_disk else []
        done, total = 0, self.cache_stats["encoded"]
        for bucket in sorted(todo):
            group = todo[bucket]
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                pms = [self._pixels_and_alpha(by_path[p][0], Draw()) for p in chunk]
                arrs = [a for a, _ in pms]
                mean, std = self._encode(vae, [to_tensor(a) for a in arrs], device, dtype)
                mirrored = [j for j, p in enumerate(chunk) if flips[p]]
                if mirrored:
                    mean_f, std_f = self._encode(vae, [to_tensor(arrs[j][:, ::-1].copy()) for j in mirrored],
                                                 device, dtype)
                for j, p in enumerate(chunk):
                    m = Moments(mean[j].clone(), std[j].clone())
                    if flips[p]:
                        k = mirrored.index(j)
                        m.mean_flipped, m.std_flipped = mean_f[k].clone(), std_f[k].clone()
                    m.mask = pms[j][1]
                    moments[p] = m
                    if self.cache_to_disk:
                        save_entry(disk_path(p, bucket), keys[p], m)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        latents: list[torch.Tensor] = [None] * len(self.items)  # type: ignore[list-item]
        flipped: list[torch.Tensor] = [None] * len(self.items)  # type: ignore[list-item]
        masks: list[torch.Tensor] = [None] * len(self.items)  # type: ignore[list-item]
        for p, ids in by_path.items():
            m = moments[p]
            z = sample(m.mean, m.std, seed, hashes[p], False)
            zf = sample(m.mean_flipped, m.std_flipped, seed, hashes[p], True) if flips[p] else None
            for i in ids:
                latents[i], flipped[i] = z, zf
                masks[i] = self._mask(i, Draw(), m.mask) if self.masked else None
        self._latents = latents
        self._latents_flipped = flipped if any(flips.values()) else None
        self._masks = masks if self.masked else None

    @staticmethod
    def _encode(vae, xs: list[torch.Tensor], device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack(xs).to(device, dtype)
        with torch.no_grad():
            dist = vae.encode(x).latent_dist
        return dist.mean.to("cpu", torch.float32), dist.std.to("cpu", torch.float32)

    def drop_latents(self) -> None:
        self._latents = None
        self._latents_flipped = None
        self._masks = None

    # ---- epochs --------------------------------------------------------------------------
    def batch_plan(self, epoch: int, batch_size: int, seed: int) -> list[list[int]]:
        """Sample ids of each batch of `epoch`, in order (deterministic in seed + epoch)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        # One seeded order of every sample; each bucket's batches are consecutive runs of it and
        # batches go in the order of their first sample. With one bucket the sample sequence
        # is then the same for every batch size, so batch 2 and 2 x batch 1 with gradient
        # accumulation (or 2 processes) see the same samples (sd-scripts shuffles batches instead).
        rng = random.Random(seed + epoch)
        order = [s for bucket in self._buckets for s in bucket]
        rng.shuffle(order)
        rank = {s: i for i, s in enumerate(order)}
        batches = []
        for bucket in self._buckets:
            ids = sorted(bucket, key=rank.__getitem__)
            batches += [ids[k:k + batch_size] for k in range(0, len(ids), batch_size)]
        batches.sort(key=lambda b: rank[b[0]])
        return batches

    def fixed_batches(self, batch_size: int) -> list[list[int]]:
        """Sample ids in canonical order, bucket by bucket, cut into batches (no shuffle: validation)."""
        return [b[k:k + batch_size] for b in self._buckets for k in range(0, len(b), batch_size)]

    def caption_for(self, sample_id: int, epoch: int, seed: int) -> str:
        """The caption of one draw (its subset's caption options); its randomness is seeded by
        (seed, epoch, sample id)."""
        rng = random.Random(f"{seed}:{epoch}:{sample_id}")
        i = self.samples[sample_id]
        return self.item_captions[i].apply(self.items[i].caption, rng, epoch)

    def caption_epochs(self, epochs: Iterable[int]) -> list[int]:
        """The epochs of `epochs` whose caption draws can differ from every earlier one's: all of them
        when a caption option draws at random (shuffle, dropout), else the first epoch of each pattern
        of caption_dropout_every_n_epochs (fixed captions: one epoch says every string)."""
        options = set(self.item_captions)
        if any(o.random for o in options):
            return list(epochs)
        first: dict[tuple[bool, ...], int] = {}
        for epoch in epochs:
            first.setdefault(tuple(o.dropped_in(epoch) for o in options), epoch)
        return sorted(first.values())

    def augmentation_for(self, sample_id: int, epoch: int, seed: int) -> Draw:
        """Flip / colour / crop decisions of one draw (its subset's augmentation), seeded by
        (seed, epoch, sample id)."""
        i = self.samples[sample_id]
        pl = self.placements[i]
        rng = random.Random(f"aug:{seed}:{epoch}:{sample_id}")
        return draw_augmentation(self.item_augment[i], rng, pl.resized, pl.bucket)

    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        for sample_ids in self.batch_plan(epoch, batch_size, seed):
            yield self.make_batch(sample_ids, epoch, seed)

    def _pixels_array(self, item: int, draw: Draw):
        return self._pixels_and_alpha(item, draw)[0]

    def _pixels_and_mask(self, item: int, draw: Draw):
        """The drawn pixels and the item's loss mask (see _mask), None when nothing is masked."""
        pixels, alpha = self._pixels_and_alpha(item, draw)
        return pixels, (self._mask(item, draw, alpha) if self.masked else None)

    def _mask(self, item: int, draw: Draw, alpha: torch.Tensor | None) -> torch.Tensor:
        """The loss mask (1, H/8, W/8) of one draw: its mask file (conditioning_data_dir) cropped
        and flipped as the image, else its alpha mask, else ones (the image counts everywhere)."""
        path, pl = self.items[item].mask_path, self.placements[item]
        if path is None:
            return alpha if alpha is not None else latent_mask(None, pl.bucket, VAE_DOWNSAMPLE)
        plane = resize_crop_alpha(load_mask_plane(path), pl.resized, pl.bucket, draw.crop)
        mask = latent_mask(plane, pl.bucket, VAE_DOWNSAMPLE)
        return mask.flip(-1).contiguous() if draw.flip else mask

    def _pixels_and_alpha(self, item: int, draw: Draw):
        """The drawn uint8 (H, W, 3) pixels and, with alpha_mask, the alpha loss mask (1, H/8, W/8)
        of the same crop and flip (None without alpha_mask). With alpha_mask the RGB channels
        are used as stored (not composited on white), as sd-scripts."""
        pl = self.placements[item]
        if not self.alpha_mask:
            arr = resize_crop(load_image_rgb(self.items[item].path), pl.resized, pl.bucket, draw.crop)
            return apply_pixels(arr, draw), None
        rgb, alpha = load_image_rgb_alpha(self.items[item].path)
        arr = resize_crop(rgb, pl.resized, pl.bucket, draw.crop)
        a = None if alpha is None else resize_crop_alpha(alpha, pl.resized, pl.bucket, draw.crop)
        mask = latent_mask(a, pl.bucket, VAE_DOWNSAMPLE)
        return apply_pixels(arr, draw), (mask.flip(-1).contiguous() if draw.flip else mask)

    def make_batch(self, sample_ids: list[int], epoch: int, seed: int) -> Batch:
        item_ids = [self.samples[s] for s in sample_ids]
        is_reg = [self.items[i].is_reg for i in item_ids]
        weights = torch.tensor([self.prior_loss_weight if r else 1.0 for r in is_reg], dtype=torch.float32)
        captions = [self.caption_for(s, epoch, seed) for s in sample_ids]
        draws = [self.augmentation_for(s, epoch, seed) for s in sample_ids]
        flips = [d.flip for d in draws]
        bucket = self.placements[item_ids[0]].bucket
        sizes = {"original_sizes": [tuple(self.sizes[i]) for i in item_ids],
                 "crop_top_lefts": [crop_top_left(bucket, self.sizes[i], f) for i, f in zip(item_ids, flips)]}
        if self._latents is not None:
            rows = [self._latents_flipped[i] if f and self._latents_flipped is not None else self._latents[i]
                    for i, f in zip(item_ids, flips)]
            masks = None
            if self._masks is not None:
                masks = torch.stack([self._masks[i].flip(-1) if f else self._masks[i] for i, f in zip(item_ids, flips)])
            return Batch(captions, weights, is_reg, latents=torch.stack(rows), item_indices=item_ids,
                         flipped=flips, bucket=bucket, masks=masks, **sizes)
        pms = [self._pixels_and_mask(i, d) for i, d in zip(item_ids, draws)]
        pixels = torch.stack([to_tensor(a) for a, _ in pms])
        masks = torch.stack([m for _, m in pms]) if self.masked else None
        return Batch(captions, weights, is_reg, pixels=pixels, item_indices=item_ids, flipped=flips, bucket=bucket,
                     masks=masks, **sizes)


def validation_seed_for(cfg: "TrainConfig", seed: int | None = None) -> int:
    """validation_seed; unset: the run's seed (`seed`, else cfg.seed, else 0)."""
    for v in (cfg.validation_seed, seed, cfg.seed):
        if v is not None:
            return int(v)
    return 0


def apply_validation(cfg: "TrainConfig", index: DatasetIndex, seed: int | None = None) -> DatasetIndex:
    """Take cfg's validation images out of `index` (in place; idempotent): validation_split holds
    a fraction of every train folder out, validation_data_dir (same layout) is scanned as the
    validation set (its repeats are ignored). Returns the index."""
    split, vdir = cfg.validation_split, cfg.validation_data_dir
    if split:
        index.apply_validation_split(split, validation_seed_for(cfg, seed))
    elif vdir and index.validation_source != "validation_data_dir":
        try:
            vindex = scan_folders(vdir, None, cfg.caption_extension)
        except DataError as e:
            fix = (e.fix or "").replace("train_data_dir", "validation_data_dir")
            raise DataError(e.message, file=e.file, key="validation_data_dir", fix=fix or None) from None
        index.set_validation_items(vindex.items)
        index.warnings += [f"validation_data_dir: {w}" for w in vindex.warnings]
    return index
