"""Data order for training: resumable global batches and position-keyed flips.

The order of an epoch is a permutation drawn from (seed, epoch). It is cut into *global*
batches of ``batch_size * world_size`` samples and rank r takes the r-th slice of each, so
the samples of step k do not depend on how many ranks share them. The horizontal flip of
each sample is drawn from (seed, step) over the global batch as well. Resuming at a
global-batch boundary therefore repeats the uninterrupted run, on any world size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from facevib.config import ConfigError
from facevib.engine.seeding import Stream, numpy_rng, torch_generator

__all__ = ["DataPosition", "GlobalBatchSampler", "batches_per_epoch", "build_loader", "random_flip"]


@dataclass(frozen=True)
class DataPosition:
    """Where the data stream stands: the next global batch of an epoch."""

    epoch: int = 0
    batch: int = 0

    def normalised(self, batches_per_epoch: int) -> DataPosition:
        """Roll over to the next epoch once every batch of this one has been used."""
        if self.batch >= batches_per_epoch:
            return DataPosition(self.epoch + 1, 0)
        return self

    def remap(self, old_global_batch: int, new_global_batch: int) -> DataPosition:
        """Same samples consumed, expressed in batches of another global size (rounded down)."""
        if old_global_batch == new_global_batch:
            return self
        return DataPosition(self.epoch, (self.batch * old_global_batch) // new_global_batch)


def batches_per_epoch(num_samples: int, global_batch: int) -> int:
    """Full global batches in one epoch (the remainder is dropped, as DDP training does)."""
    return num_samples // global_batch


class GlobalBatchSampler(Sampler[list[int]]):
    """Yields this rank's slice of each global batch, from ``start_batch`` on."""

    def __init__(
        self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int, epoch: int, start_batch: int = 0
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.global_batch = batch_size * world_size
        self.num_batches = batches_per_epoch(num_samples, self.global_batch)
        if self.num_batches == 0:
            raise ConfigError(
                f"the dataset has {num_samples} samples, fewer than one global batch of "
                f"{self.global_batch} (data.batch_size={batch_size} x {world_size} ranks)"
            )

    def __len__(self) -> int:
        return max(0, self.num_batches - self.start_batch)

    def __iter__(self) -> Iterator[list[int]]:
        order = numpy_rng(self.seed, Stream.DATA_ORDER, self.epoch).permutation(self.num_samples)
        lo = self.rank * self.batch_size
        for batch in range(self.start_batch, self.num_batches):
            start = batch * self.global_batch + lo
            yield order[start : start + self.batch_size].tolist()


def build_loader(dataset: Dataset, sampler: GlobalBatchSampler, num_workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over ``sampler``'s batches (workers are re-created every epoch)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
    )


def random_flip(images: torch.Tensor, seed: int, step: int, rank: int, world_size: int) -> torch.Tensor:
    """Flip a random half of ``images`` horizontally, drawn per global sample position.

    The draw covers the whole global batch and this rank keeps its slice, so a sample's flip
    depends on (seed, step, position in the global batch, global batch size) only. It is made
    on the images' device by a generator of (seed, step) there: a CPU draw would need a
    host-to-device copy every step (CPU and CUDA samplers differ, so do their flips).
    """
    batch = images.shape[0]
    generator = torch_generator(seed, Stream.FLIP, step, device=images.device)
    draws = torch.rand(batch * world_size, generator=generator, device=images.device)
    mask = draws[rank * batch : (rank + 1) * batch] < 0.5
    return torch.where(mask.view(-1, 1, 1, 1), images.flip(-1), images)
