"""Batches built when their step comes, in the main process or in DataLoader workers.

The loop plans an epoch up front only as sample ids (TrainDataset.batch_plan, cheap) and
asks for the Batch objects one step at a time, so without cached latents an epoch no
longer decodes every image before its first step, and a mid-epoch resume does not build
the batches it skips.

- ``max_data_loader_n_workers = 0``: each batch is built in the main process when it is
  taken (nothing ahead).
- ``max_data_loader_n_workers > 0``: a torch DataLoader (batch_size=None) over a map-style
  dataset whose keys are (epoch, sample ids) builds batches in worker processes, with
  prefetching; pinned memory when training on CUDA. Workers give the same batches as the
  main process because make_batch is seeded by (seed, epoch, sample id) only, not by any
  process-global RNG. The keys come from a sampler the main process refills every epoch,
  so ``persistent_data_loader_workers`` keeps the same workers across epochs.

Several processes: micro-batch k of an epoch is trained by process k % W (train_step's
``[r::W]`` within each step group of ga x W micro-batches), so :func:`rank_groups` gives
each process only its own batches and no process builds another's.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

if TYPE_CHECKING:
    from .dataset import Batch, TrainDataset


def rank_groups(n_batches: int, per_step: int, world: int, rank: int, first_group: int = 0) -> list[list[int]]:
    """Batch positions process `rank` trains in each step group from `first_group` on.

    A group is `per_step` (= accumulation x world) consecutive batches; process r takes the
    group's batches r, r + W, ... As per_step is a multiple of W, that is every batch k with
    k % W == r. The last group may be short and leave a process nothing (an empty list)."""
    n_groups = -(-n_batches // per_step)
    return [[k for k in range(j * per_step, min((j + 1) * per_step, n_batches)) if k % world == rank]
            for j in range(first_group, n_groups)]


class _BatchKeys(Dataset):
    """Map-style view of the training set whose key is (epoch, sample ids) -> Batch."""

    def __init__(self, dataset: "TrainDataset", seed: int):
        self.dataset, self.seed = dataset, seed

    def __getitem__(self, key: tuple[int, tuple[int, ...]]) -> "Batch":
        epoch, ids = key
        return self.dataset.make_batch(list(ids), epoch, self.seed)


class _EpochSampler(Sampler):
    """Yields this epoch's keys; refilled by the main process before each epoch's iter()."""

    def __init__(self) -> None:
        self.keys: list[tuple[int, tuple[int, ...]]] = []

    def __iter__(self):
        return iter(list(self.keys))

    def __len__(self) -> int:
        return len(self.keys)


def _as_is(batch):  # batch_size=None: no collation, the Batch is already whole
    return batch


class BatchLoader:
    def __init__(self, dataset: "TrainDataset", seed: int, *, workers: int = 0, persistent: bool = False,
                 pin_memory: bool = False, prefetch_factor: int = 2):
        self.dataset, self.seed, self.workers = dataset, seed, int(workers)
        self._loader: DataLoader | None = None
        if self.workers > 0:
            self._sampler = _EpochSampler()
            self._loader = DataLoader(_BatchKeys(dataset, seed), batch_size=None, sampler=self._sampler,
                                      num_workers=self.workers, collate_fn=_as_is, pin_memory=pin_memory,
                                      persistent_workers=persistent, prefetch_factor=prefetch_factor)

    @classmethod
    def for_run(cls, run) -> "BatchLoader":
        cfg = run.cfg
        return cls(run.dataset, run.seed, workers=cfg.max_data_loader_n_workers,
                   persistent=cfg.persistent_data_loader_workers, pin_memory=run.device.type == "cuda")

    def batches(self, epoch: int, plan: list[list[int]]) -> Iterator["Batch"]:
        """The Batch of each entry of `plan` (sample-id lists of `epoch`), in order."""
        if not plan:
            return iter(())
        if self._loader is None:
            return (self.dataset.make_batch(ids, epoch, self.seed) for ids in plan)
        self._sampler.keys = [(epoch, tuple(ids)) for ids in plan]
        return iter(self._loader)

    def close(self) -> None:
        """Stop persistent workers (non-persistent ones end with their epoch's iterator)."""
        it = getattr(self._loader, "_iterator", None) if self._loader is not None else None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None
