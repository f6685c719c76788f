"""The held-out validation images (latents cached once) and what a run keeps between validations;
see train/validation.py for how the loss over them is computed."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..data.dataset import Batch, TrainDataset, validation_seed_for
from ..data.folders import DatasetIndex
from ..data.latent_cache import file_sha256
from ..transfer import on_device

if TYPE_CHECKING:
    from ..config.schema import TrainConfig


@dataclass
class ValidationSet:
    dataset: TrainDataset  # the validation images, repeats 1, no augmentation, latents cached
    hashes: list[str]      # sha256 of each item's file (its noise seeds)
    seed: int              # validation_seed (or the run's seed)
    batch_size: int

    def __len__(self) -> int:
        return len(self.dataset.items)

    def batches(self) -> Iterator[Batch]:
        """Fixed batches (bucket by bucket, canonical order); the same every call."""
        for ids in self.dataset.fixed_batches(self.batch_size):
            yield self.dataset.make_batch(ids, 1, self.seed)


FIXED_SUBSET_SETTINGS = ("caption_prefix", "caption_suffix")  # per-subset settings that hold no randomness


def validation_dataset(cfg: "TrainConfig", index: DatasetIndex) -> TrainDataset | None:
    """A TrainDataset of index.validation_items (each once), with the training buckets, resolution and
    alpha_mask but no augmentation and no caption randomness (a subset's own caption_prefix/suffix are
    kept: they are not random); None when there are no such images."""
    items = [replace(it, repeats=1, settings={k: v for k, v in it.settings.items() if k in FIXED_SUBSET_SETTINGS})
             for it in index.validation_items]
    if not items:
        return None
    vcfg = cfg.model_copy(update={
        "validation_split": 0.0, "validation_data_dir": None, "flip_aug": False, "color_aug": False,
        "random_crop": False, "shuffle_caption": False, "caption_dropout_rate": 0.0,
        "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0})
    vindex = DatasetIndex(items=items, folders=[], num_train_images=len(items), num_reg_images=0)
    return TrainDataset.from_config(vcfg, vindex)


def build_validation_set(cfg: "TrainConfig", index: DatasetIndex, vae: Any, device: str | torch.device = "cpu",
                         seed: int | None = None, dtype: torch.dtype = torch.float32) -> ValidationSet | None:
    """The validation images of `index` (after TrainDataset.from_config / apply_validation), latents
    encoded once now (from the disk cache with cache_latents_to_disk). None without validation images.
    seed: the run's seed (validation_seed's default). Touches no global RNG."""
    ds = validation_dataset(cfg, index)
    if ds is None:
        return None
    vseed = validation_seed_for(cfg, seed)
    with on_device(vae, device):  # and back to where the run keeps it
        ds.cache_latents(vae, batch_size=cfg.vae_batch_size, device=device, dtype=dtype, seed=vseed)
    return ValidationSet(ds, [file_sha256(it.path) for it in ds.items], vseed,
                         cfg.train_batch_size)


@dataclass
class ValidationResult:
    loss: float    # mean over the images used x timesteps; NaN without validation images
    batches: int   # validation batches used (max_validation_steps caps them)
    images: int    # images in those batches


@dataclass
class ValidationState:
    """A run's validation: the set (built on the first validation) and the (step, result) of the last
    one, reused when the epoch and the step rule fire at the same step."""
    set: ValidationSet | None = None
    last: tuple[int, ValidationResult] | None = None
