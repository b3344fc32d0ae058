"""ImageFolder data for pretraining: validated folders, per-sample seeded two-view augmentation and a
deterministic, resumable sampler.

Reproducibility: the sampler yields ``(epoch, index)`` keys and the dataset seeds the augmentation of
each sample from ``(seed, epoch, index)``. The permutation of an epoch depends only on
``(seed, epoch)`` and each process takes every ``world_size``-th sample of it, so the global batch at
every step, and every view in it, is the same whatever the number of processes and data-loading
workers, and a run resumed in the middle of an epoch (``set_position(epoch, step)`` skips the batches
already consumed) sees exactly the batches the uninterrupted run would have.

Corrupt images: a clear error, never a silent skip. An image PIL cannot decode (truncated or
damaged JPEG, a non-image file with an image extension) stops the run with ``CorruptImageError``
naming the file; fix or remove the file and restart (the run resumes from its last checkpoint).
Skipping would change the dataset, and so the result, without anyone noticing; substitutes would
break the equal local batches the loss needs.
"""
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import IMG_EXTENSIONS


class DataError(ValueError):
    """A data folder that cannot be used; the message names the path and what was expected."""


class CorruptImageError(DataError):
    pass


def scan_image_folder(root):
    """(paths, class names) of an ImageFolder root: one sub-folder per class, images inside.

    Every class folder must hold at least one image: an empty one is almost always a failed copy.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found; expected an ImageFolder root with one sub-folder "
                        "of images per class (e.g. datasets/imagenet/train)")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DataError(f"{root}: no class sub-folders; expected an ImageFolder root (<root>/<class>/<image>)")
    # The usual slip: the dataset root instead of its train split, which would pretrain on val too.
    split = next((name for name in ("train", "val") if name in classes
                  and any(entry.is_dir() for entry in os.scandir(root / name))), None)
    if split:
        raise DataError(f"{root}: has a {split}/ folder of class folders, so it is a dataset root, not an "
                        f"ImageFolder of classes; pass the split, e.g. --data {root / 'train'}")
    paths, empty = [], []
    for name in classes:
        found = sorted(
            os.path.join(dirpath, file)
            for dirpath, _, files in os.walk(root / name, followlinks=True)
            for file in files if file.lower().endswith(IMG_EXTENSIONS)
        )
        if not found:
            empty.append(str(root / name))
        paths += found
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"{len(empty)} class folder(s) without images ({', '.join(IMG_EXTENSIONS)}): {shown}")
    return paths, classes


def sample_seed(seed, epoch, index):
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class TwoViewDataset(Dataset):
    """``dataset[(epoch, index)] -> (view1, view2)`` of the index-th image, augmented reproducibly."""

    def __init__(self, root, transform, seed=0):
        self.paths, self.classes = scan_image_folder(root)
        self.transform, self.seed = transform, seed

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        epoch, index = key
        path = self.paths[index]
        # Only this sample's augmentation draws from the seeded generator; the caller's state is restored.
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
            try:
                with Image.open(path) as image:  # lazily: the transform may decode at reduced scale
                    return self.transform(image)
            except (OSError, SyntaxError, Image.DecompressionBombError) as error:
                raise CorruptImageError(
                    f"{path}: cannot decode this image ({error}); fix or remove the file and restart "
                    "(training resumes from its last checkpoint)") from error


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
