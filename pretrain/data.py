"""Pretraining data: per-sample seeded two-view augmentation and a deterministic, resumable sampler.

The sampler yields ``(epoch, index)`` keys and the dataset seeds the augmentation of each sample from
``(seed, epoch, index)``. The permutation of an epoch depends only on ``(seed, epoch)`` and each process
takes every ``world_size``-th sample of it, so the global batch at every step, and every view in it, is
the same whatever the number of processes and data-loading workers, and a run resumed in the middle of
an epoch (``set_position(epoch, step)`` skips the batches already consumed) sees exactly the batches the
uninterrupted run would have.
"""
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pretrain.images import DataError, open_image, sample_generator, scan_image_folder


class TwoViewDataset(Dataset):
    """``dataset[(epoch, index)] -> (view1, view2)`` of the index-th image, augmented reproducibly."""

    def __init__(self, root, transform, seed=0):
        self.paths, self.classes = scan_image_folder(root)
        self.transform, self.seed = transform, seed

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key
        # Lazily opened: the transform may decode a JPEG at reduced scale.
        with sample_generator(self.seed, epoch, index), open_image(self.paths[index]) as image:
            return self.transform(image)


class ResumableSampler(Sampler):
    """This process's share of an epoch's permutation, cut to whole global batches, from a given step."""

    def __init__(self, num_samples, global_batch, rank=0, world_size=1, seed=0):
        if global_batch % world_size:
            raise ValueError(f"--batch-size {global_batch} is not divisible by the {world_size} processes")
        self.steps_per_epoch = num_samples // global_batch
        if self.steps_per_epoch == 0:
            raise DataError(f"the dataset has {num_samples} images, fewer than one global batch of {global_batch}")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.local_batch = global_batch // world_size
        self.epoch, self.start_step = 0, 0

    def set_position(self, epoch, start_step=0):
        """Next iteration yields ``epoch`` from step ``start_step`` (the batches before it are skipped)."""
        if not 0 <= start_step < self.steps_per_epoch:
            raise ValueError(f"start step {start_step} outside the epoch's {self.steps_per_epoch} steps")
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator)[: self.steps_per_epoch * self.global_batch]
        mine = order[self.rank :: self.world_size][self.start_step * self.local_batch :]
        return ((self.epoch, index) for index in mine.tolist())

    def __len__(self):
        return (self.steps_per_epoch - self.start_step) * self.local_batch


def make_loader(dataset, sampler, workers, pin_memory):
    """Batches of (view1, view2) with the sampler's local batch size; the sampler drops the partial batch."""
    return DataLoader(
        dataset, batch_size=sampler.local_batch, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=True, persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None,
    )
