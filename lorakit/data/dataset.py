"""The training dataset: samples (images x repeats), the latent cache and seeded epochs.

One epoch draws every image `repeats` times, as kohya. Batches are planned the way
sd-scripts plans them with buckets: the samples of each bucket are cut into
ceil(n / batch_size) batches (the last one may be short), and each epoch the batch
order and each bucket's contents are shuffled with a generator seeded by seed + epoch.
This first cut has one bucket (the configured resolution); `_buckets` is where the
bucketing step plugs in.

Unlike sd-scripts (which reshuffles the previous epoch's order), every epoch is shuffled
from the same canonical order, so epoch k's batches depend only on (seed, k): a resumed
run sees the batches an uninterrupted one would have.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from .captions import CaptionOptions
from .folders import DatasetIndex, ImageItem, scan_folders
from .images import load_training_image

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

    def __len__(self) -> int:
        return len(self.captions)


class TrainDataset:
    def __init__(self, index: DatasetIndex, resolution: tuple[int, int], *, shuffle_caption: bool = False,
                 keep_tokens: int = 0, prior_loss_weight: float = 1.0):
        w, h = resolution
        if w % VAE_DOWNSAMPLE or h % VAE_DOWNSAMPLE:
            raise ValueError(f"resolution {w}x{h} must be a multiple of {VAE_DOWNSAMPLE}")
        self.index = index
        self.items: list[ImageItem] = index.items
        self.resolution = (int(w), int(h))
        self.caption_options = CaptionOptions(shuffle=shuffle_caption, keep_tokens=keep_tokens)
        self.prior_loss_weight = float(prior_loss_weight)
        # canonical sample list: item i appears items[i].repeats times, items in index order
        self.samples: list[int] = [i for i, it in enumerate(self.items) for _ in range(it.repeats)]
        self._buckets: list[list[int]] = [list(range(len(self.samples)))]  # sample ids per bucket
        self._latents: list[torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg: "TrainConfig", index: DatasetIndex | None = None) -> "TrainDataset":
        if index is None:
            index = scan_folders(cfg.train_data_dir, cfg.reg_data_dir, cfg.caption_extension)
        return cls(index, cfg.resolution, shuffle_caption=cfg.shuffle_caption, keep_tokens=cfg.keep_tokens,
                   prior_loss_weight=cfg.prior_loss_weight)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of a latent."""
        return self.resolution[1] // VAE_DOWNSAMPLE, self.resolution[0] // VAE_DOWNSAMPLE

    @property
    def latents_cached(self) -> bool:
        return self._latents is not None

    def num_batches_per_epoch(self, batch_size: int) -> int:
        """Sum over buckets of ceil(samples / batch_size) (kohya's len(train_dataloader))."""
        return sum(math.ceil(len(b) / batch_size) for b in self._buckets)

    # ---- latent cache ------------------------------------------------------------------
    def cache_latents(self, vae, *, batch_size: int = 1, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32, seed: int = 0,
                      progress: Callable[[int, int], None] | None = None) -> None:
        """Encode each unique image once: `vae.encode(x).latent_dist.sample(generator)`.

        Stored unscaled (the loop multiplies by vae.config.scaling_factor, 0.18215 for SD),
        float32 on the CPU. The generator is seeded with `seed`, so the cache is reproducible.
        `progress(done, total)` is called after each VAE batch.
        """
        device = torch.device(device)
        by_path: dict[Path, list[int]] = {}
        for i, it in enumerate(self.items):
            by_path.setdefault(Path(it.path), []).append(i)
        paths = list(by_path)
        gen = torch.Generator(device=device).manual_seed(seed)
        latents: list[torch.Tensor | None] = [None] * len(self.items)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            x = torch.stack([load_training_image(p, self.resolution) for p in chunk]).to(device, dtype)
            with torch.no_grad():
                z = vae.encode(x).latent_dist.sample(generator=gen)
            z = z.to("cpu", torch.float32)
            for j, p in enumerate(chunk):
                for i in by_path[p]:
                    latents[i] = z[j].clone()
            if progress is not None:
                progress(min(start + batch_size, len(paths)), len(paths))
        self._latents = latents  # type: ignore[assignment]

    def drop_latents(self) -> None:
        self._latents = None

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

    def caption_for(self, sample_id: int, epoch: int, seed: int) -> str:
        """The caption of one draw; its randomness is seeded by (seed, epoch, sample id)."""
        rng = random.Random(f"{seed}:{epoch}:{sample_id}")
        return self.caption_options.apply(self.items[self.samples[sample_id]].caption, rng)

    def epoch_batches(self, epoch: int, batch_size: int, seed: int) -> Iterator[Batch]:
        for sample_ids in self.batch_plan(epoch, batch_size, seed):
            yield self.make_batch(sample_ids, epoch, seed)

    def make_batch(self, sample_ids: list[int], epoch: int, seed: int) -> Batch:
        item_ids = [self.samples[s] for s in sample_ids]
        is_reg = [self.items[i].is_reg for i in item_ids]
        weights = torch.tensor([self.prior_loss_weight if r else 1.0 for r in is_reg], dtype=torch.float32)
        captions = [self.caption_for(s, epoch, seed) for s in sample_ids]
        if self._latents is not None:
            latents = torch.stack([self._latents[i] for i in item_ids])
            return Batch(captions, weights, is_reg, latents=latents, item_indices=item_ids)
        pixels = torch.stack([load_training_image(self.items[i].path, self.resolution) for i in item_ids])
        return Batch(captions, weights, is_reg, pixels=pixels, item_indices=item_ids)
