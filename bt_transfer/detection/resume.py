"""What a detection checkpoint must hold besides the weights, so that a resumed run is the same run.

Detectron2 0.6 saves the model, the iteration and the LR schedule; the trainer (``trainer.Trainer``) adds the
optimizer state, and from here each process's random states and how far each of its data streams has got.

Data: Detectron2's aspect-ratio grouping buckets *mapped* images, so at a checkpoint its buckets may hold
images that are already decoded and augmented: a position alone could not restore that. ``ResumableStream``
groups the sampler's indices the same way *before* mapping (the same batches, in the same order), so between
batches nothing is pending and the number of samples handed out is the whole state of the stream; a resumed
stream skips that many indices (cheap: no image is read). With 0 data-loading workers every random draw of
the augmentation then comes from the restored process RNG, and a resumed run is bit-identical to an
uninterrupted one on CPU; with workers the images and their order are the same but each worker reseeds.
"""
import contextlib
import itertools
import random

import numpy as np
import torch
from detectron2.data import DatasetFromList, MapDataset, build_detection_train_loader
from detectron2.data.build import worker_init_reset_seed
from detectron2.data.common import ToIterableDataset
from detectron2.utils import comm


def rng_state(cuda=False):
    """This process's python, numpy, torch (and with ``cuda`` the current GPU's) random states, as data
    ``torch.load(weights_only=True)`` reads back (tensors, numbers, strings, tuples)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)}
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state):
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


@contextlib.contextmanager
def preserved_rng(cuda=False):
    """Whatever runs inside (an evaluation) leaves the random states as it found them, so that training after
    it draws the same numbers as a run resumed from the checkpoint saved just before it."""
    state = rng_state(cuda)
    try:
        yield
    finally:
        restore_rng(state)


def group_by_aspect(indices, landscape, batch_size):
    """The batches ``AspectRatioGroupedDataset`` would form from ``indices``, one after the other: each index
    goes to the bucket of its image's orientation (``landscape[i]``: width > height), a full bucket is emitted."""
    buckets = ([], [])
    for index in indices:
        bucket = buckets[0 if landscape[index] else 1]
        bucket.append(index)
        if len(bucket) == batch_size:
            yield from bucket
            bucket.clear()


class ResumableStream(torch.utils.data.Sampler):
    """A training sampler's indices for this process, grouped into whole batches, from ``start`` on."""

    def __init__(self, sampler, landscape, batch_size):
        self.sampler, self.landscape, self.batch_size = sampler, landscape, batch_size
        self.start = 0

    def __iter__(self):
        indices = iter(self.sampler)
        if self.landscape is not None:
            indices = group_by_aspect(indices, self.landscape, self.batch_size)
        return itertools.islice(indices, self.start, None)


def _as_is(item):
    return item


class ResumableLoader:
    """Batches of mapped images from a ``ResumableStream``; ``samples`` counts what has been handed out."""

    def __init__(self, loader, stream):
        self.loader, self.stream = loader, stream
        self.samples = 0
        self._items = None

    def __iter__(self):
        if self._items is None:
            self._items = iter(self.loader)
        while True:
            batch = list(itertools.islice(self._items, self.stream.batch_size))
            self.samples += len(batch)
            yield batch

    def resume_at(self, samples):
        """Continue after the first ``samples`` samples. The loader's iterator is made here, not at the first
        batch: making it draws a seed from torch's RNG, which must happen before the RNG is restored."""
        self.stream.start = self.samples = samples
        self._items = iter(self.loader)


def resumable_train_loader(cfg, mapper=None):
    """Detectron2's training loader of ``cfg`` (its dataset, mapper, sampler, batch and workers) as a
    ``ResumableLoader``: the same batches as ``build_detection_train_loader``, resumable at any batch."""
    args = build_detection_train_loader.from_config(cfg, mapper)
    dataset = args["dataset"]
    batch_size = args["total_batch_size"] // comm.get_world_size()
    landscape = [d["width"] > d["height"] for d in dataset] if args["aspect_ratio_grouping"] else None
    stream = ResumableStream(args["sampler"], landscape, batch_size)
    # One image at a time, in the stream's order (from several workers too), batched in this process.
    loader = torch.utils.data.DataLoader(
        ToIterableDataset(MapDataset(DatasetFromList(dataset, copy=False), args["mapper"]), stream),
        batch_size=None, num_workers=args["num_workers"], collate_fn=_as_is, worker_init_fn=worker_init_reset_seed)
    return ResumableLoader(loader, stream)
