"""Labelled ImageFolder splits for ImageNet evaluation, with the protocol's augmentation.

Training: RandomResizedCrop(224) + horizontal flip; validation: Resize(256) + CenterCrop(224); both
normalised with the ImageNet mean and std (the official evaluate.py). Folders are checked by
``pretrain.images.scan_image_folder`` and an undecodable image is a ``CorruptImageError`` naming it.
"""
import copy
from pathlib import Path

import torch
from torchvision import transforms

from pretrain.augment import IMAGENET_MEAN, IMAGENET_STD
from pretrain.images import DataError, open_image, sample_generator, scan_image_folder


class LabelledImages(torch.utils.data.Dataset):
    """``(image, class index)`` pairs of an ImageFolder split, checked by ``pretrain.images.scan_image_folder``.

    A key ``(epoch, i)`` draws the random augmentation of image ``i`` from its own seed, so a run's
    crops depend neither on the number of processes or workers nor on where a resumed run restarted;
    a plain index ``i`` is for the deterministic validation transform.
    """

    def __init__(self, root, transform, seed=0):
        self.root, self.transform, self.seed = Path(root), transform, seed
        self.paths, self.classes = scan_image_folder(root)
        self.files = [Path(path).relative_to(self.root).as_posix() for path in self.paths]
        index = {name: i for i, name in enumerate(self.classes)}
        self.targets = [index[file.split("/", 1)[0]] for file in self.files]

    def select(self, indices):
        """The same split restricted to ``indices`` (a semi-supervised subset)."""
        chosen = copy.copy(self)
        chosen.paths, chosen.files, chosen.targets = ([items[i] for i in indices]
                                                      for items in (self.paths, self.files, self.targets))
        return chosen

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (None, key)
        with open_image(self.paths[i]) as image:
            image = image.convert("RGB")
        if epoch is None:
            return self.transform(image), self.targets[i]
        with sample_generator(self.seed, epoch, i):
            return self.transform(image), self.targets[i]


class EpochKeySampler(torch.utils.data.DistributedSampler):
    """This process's share of the epoch's shuffled indices, as ``(epoch, index)`` keys."""

    def __iter__(self):
        return ((self.epoch, i) for i in super().__iter__())


def centre_crop_transform(image_size, resize):
    """The deterministic evaluation transform: Resize(resize) + CenterCrop(image_size), normalised."""
    return transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor(),
                               transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def image_folders(root, image_size, val_resize, seed):
    """The train and val splits with the protocol's augmentation (random crop + flip / resize + centre crop)."""
    missing = [split for split in ("train", "val") if not (Path(root) / split).is_dir()]
    if missing:
        raise DataError(f"--data {root}: no {' or '.join(missing)} folder; expected a dataset root holding the "
                        f"train/ and val/ ImageFolders (e.g. datasets/imagenet)")
    train = LabelledImages(Path(root) / "train", transforms.Compose([
        transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]), seed=seed)
    val = LabelledImages(Path(root) / "val", centre_crop_transform(image_size, val_resize))
    if train.classes != val.classes:
        differ = sorted(set(train.classes) ^ set(val.classes))
        raise DataError(f"--data {root}: train/ and val/ hold different classes ({', '.join(differ[:10])})")
    return train, val
