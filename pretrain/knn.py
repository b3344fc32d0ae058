"""The kNN monitor of pretraining: weighted k-nearest-neighbour top-1 of the backbone's features.

The protocol is InstDisc's weighted kNN (Wu et al., CVPR 2018) with the settings DINO reports and its
``eval_knn.py`` runs (Caron et al., ICCV 2021): 2048-d backbone features, L2-normalised; the k = 20
training images most similar (cosine) to a validation image vote for their class with weight
exp(similarity / T), T = 0.07; the class with the largest total wins (a tie: the lowest class index).

A monitor, not a benchmark: the training images voted from (the bank) are a fixed, seeded,
class-balanced subset of the training split, so one evaluation costs a bounded number of forward
passes; with fewer images to vote from it reads lower than a kNN over the whole training set.

Training is unchanged by it: the backbone runs in eval mode (batch norm uses its running statistics and
updates nothing) without gradients, and torch's CPU and CUDA generators are restored afterwards (a
DataLoader draws its seed from them); the training sampler and the per-sample seeds depend on neither.
Under DDP each process embeds every world_size-th bank image and the bank is all-gathered back into
its original order; each process classifies its share of the validation images and the counts are
summed, so every process gets the accuracy one process would.
"""
import contextlib
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from pretrain.eval_data import LabelledImages, centre_crop_transform
from pretrain.eval_protocol import IMAGE_SIZE, VAL_RESIZE
from pretrain.images import DataError
from pretrain.subsets import per_class_subset, subset_indices

K, TEMPERATURE = 20, 0.07
FEATURE_DIM = 2048  # ResNet-50's pooled features


def weighted_knn_predict(queries, bank, bank_labels, num_classes, k=K, temperature=TEMPERATURE):
    """The class each row of ``queries`` gets from the weighted vote of its ``k`` nearest rows of ``bank``.

    Rows are L2-normalised, so the dot product is the cosine similarity; ``bank_labels`` holds the
    class index of each bank row. A bank smaller than ``k`` votes with all of its rows.
    """
    similarity, neighbours = (queries @ bank.T).topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(queries), num_classes, dtype=similarity.dtype, device=similarity.device)
    votes.scatter_add_(1, bank_labels[neighbours], (similarity / temperature).exp())
    return votes.argmax(dim=1)  # the first of equal maxima: the lowest class index


def labelled_splits(data, image_size, per_class, seed):
    """``((bank, val), None)``: the monitor's labelled images, both with the deterministic evaluation
    transform at ``image_size``; or ``(None, reason)`` when ``data`` has no usable ``val/`` split beside it.

    The bank is ``per_class`` images of every class of ``data``, drawn with ``seed`` (fewer when the
    smallest class has fewer, so that it stays balanced).
    """
    data = Path(data)
    val_root = data.parent / "val"
    if not val_root.is_dir() or val_root.resolve() == data.resolve():
        return None, f"no labelled validation split {val_root} beside --data {data}"
    # The evaluation protocol's 256/224 resize ratio at this run's crop size.
    transform = centre_crop_transform(image_size, round(image_size * VAL_RESIZE / IMAGE_SIZE))
    try:
        val = LabelledImages(val_root, transform)
    except DataError as error:
        return None, f"{val_root} is not a labelled validation split: {error}"
    train = LabelledImages(data, transform)
    if val.classes != train.classes:
        differ = sorted(set(val.classes) ^ set(train.classes))
        return None, f"{val_root} and --data {data} hold different classes ({', '.join(differ[:10])})"
    per_class = min(per_class, min(Counter(train.targets).values()))
    chosen = per_class_subset(train.files, per_class, seed)
    return (train.select(subset_indices(train.files, chosen, "kNN bank", data)), val), None


def gather_in_order(shard, total, world_size):
    """All processes' shards back in dataset order: process r holds rows r, r + world_size, ... of ``total``."""
    if world_size == 1:
        return shard
    rows = -(-total // world_size)  # shards differ by at most one row: pad to equal sizes for all_gather
    padded = shard.new_zeros((rows, *shard.shape[1:]))
    padded[: len(shard)] = shard
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.stack(gathered, dim=1).flatten(0, 1)[:total]


class KnnMonitor:
    """Weighted kNN top-1 of a backbone, the same on every process (see the module docstring)."""

    def __init__(self, bank, val, *, batch_size, workers=0, device=torch.device("cpu"), amp_dtype=None,
                 channels_last=False, rank=0, world_size=1):
        self.bank, self.val = bank, val
        self.batch_size, self.workers, self.device, self.amp_dtype = batch_size, workers, device, amp_dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.rank, self.world_size = rank, world_size
        self.settings = dict(knn_k=K, knn_temperature=TEMPERATURE, knn_train_images=len(bank),
                             knn_train_per_class=len(bank) // len(bank.classes), knn_val_images=len(val))

    def _shard_batches(self, dataset):
        shard = torch.utils.data.Subset(dataset, range(self.rank, len(dataset), self.world_size))
        loader = torch.utils.data.DataLoader(shard, batch_size=self.batch_size, num_workers=self.workers,
                                             pin_memory=self.device.type == "cuda")
        for images, labels in loader:
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            yield images, labels.to(self.device, non_blocking=True)

    def _features(self, backbone, images):
        amp = dict(dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None)
        with torch.autocast(self.device.type, **amp):
            return F.normalize(backbone(images).float(), dim=1)

    @contextlib.contextmanager
    def _frozen(self, backbone):
        """Eval mode (then back to the mode it was in), no gradients, the RNG states restored after."""
        was_training = backbone.training
        backbone.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                yield
        finally:
            backbone.train(was_training)

    def bank_features(self, backbone):
        """(features, labels) of the whole bank in its order, on every process."""
        # Empty to start with: a process may hold no bank image at all.
        features = [torch.empty(0, FEATURE_DIM, device=self.device)]
        labels = [torch.empty(0, dtype=torch.long, device=self.device)]
        with self._frozen(backbone):
            for images, targets in self._shard_batches(self.bank):
                features.append(self._features(backbone, images))
                labels.append(targets)
        return tuple(gather_in_order(torch.cat(parts), len(self.bank), self.world_size) for parts in (features, labels))

    def top1(self, backbone):
        """Top-1 accuracy (%) of the validation images; ``backbone`` is left in the mode it was in."""
        bank, bank_labels = self.bank_features(backbone)
        counts = torch.zeros(2, dtype=torch.float64, device=self.device)
        with self._frozen(backbone):
            for images, targets in self._shard_batches(self.val):
                predicted = weighted_knn_predict(self._features(backbone, images), bank, bank_labels,
                                                 len(self.val.classes))
                counts[0] += (predicted == targets).sum()
                counts[1] += len(targets)
        if self.world_size > 1:
            dist.all_reduce(counts)
        return (100 * counts[0] / counts[1]).item()

    def evaluate(self, backbone):
        """The metrics record of one evaluation: knn_top1, the settings and the seconds it took."""
        start = time.perf_counter()
        top1 = self.top1(backbone)
        return dict(knn_top1=top1, **self.settings, knn_seconds=round(time.perf_counter() - start, 3))
