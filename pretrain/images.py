"""ImageFolder splits and their images: the folder checks, the decoding with its error, and the seeded
generator of one sample, shared by pretraining and evaluation.

Corrupt images: a clear error, never a silent skip. An image PIL cannot decode (truncated or damaged
JPEG, a non-image file with an image extension) stops the run with ``CorruptImageError`` naming the
file; fix or remove it and restart (runs resume). Skipping would change the dataset, and so the result,
without anyone noticing; substitutes would break the equal local batches the Barlow Twins loss needs.
"""
import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from bt_transfer.core.errors import UserError
from bt_transfer.core.text import listing


class DataError(UserError, ValueError):
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
        raise DataError(f"{len(empty)} class folder(s) without images ({', '.join(IMG_EXTENSIONS)}): "
                        f"{listing(empty, shown=5)}")
    return paths, classes


def sample_seed(seed, epoch, index):
    """A well-mixed 63-bit seed for one sample of one epoch."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def sample_generator(seed, epoch, index):
    """Seed torch's global generator for one sample of one epoch; the caller's state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(sample_seed(seed, epoch, index))
        yield


@contextlib.contextmanager
def open_image(path):
    """``PIL.Image.open(path)``, lazily: a decoding failure inside the block is a CorruptImageError naming the file."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise CorruptImageError(f"{path}: cannot decode this image ({error}); fix or remove the file and restart "
                                "(the run resumes from its last checkpoint)") from error
