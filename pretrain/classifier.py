"""Training and validation of a classifier on an ImageFolder split over any number of processes: the SGD
groups of the protocol, loaders whose global batches and crops do not depend on the process count, one
training epoch, and top-1 / top-5 counted exactly (summed over disjoint validation shards).
"""
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bt_transfer.core.progress import peak_memory_gb
from pretrain.eval_data import EpochKeySampler

FC_KEYS = ("fc.weight", "fc.bias")


def build_optimizer(model, config):
    """SGD momentum 0.9 with the classifier and (semisup) the backbone as groups with their own base lr."""
    head = [p for n, p in model.named_parameters() if n in FC_KEYS]
    groups = [dict(params=head, base_lr=config["lr_classifier"])]
    if config["mode"] == "semisup":
        backbone = [p for n, p in model.named_parameters() if n not in FC_KEYS]
        groups.append(dict(params=backbone, base_lr=config["lr_backbone"]))
    return torch.optim.SGD(groups, lr=0.0, momentum=0.9, weight_decay=config["weight_decay"])


def make_loaders(train_set, val_set, config, info):
    # Each process takes every world_size-th index of one shared permutation: the global batches, and
    # (with per-image seeds) every crop in them, are those of a single process with the whole batch.
    sampler = EpochKeySampler(train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                              seed=config["seed"])
    options = dict(batch_size=config["batch_size"] // info.world_size, num_workers=config["workers"],
                   pin_memory=info.device.type == "cuda", persistent_workers=config["workers"] > 0)
    train_loader = torch.utils.data.DataLoader(train_set, sampler=sampler, **options)
    # Disjoint shards without padding, so the summed counts cover each val image exactly once.
    val_shard = torch.utils.data.Subset(val_set, range(info.rank, len(val_set), info.world_size))
    return sampler, train_loader, torch.utils.data.DataLoader(val_shard, **options)


def train_one_epoch(model, loader, optimizer, device, progress, step, images_per_step):
    """One pass over this process's share; returns the mean loss over all processes, images/s and the step."""
    loss_sum, seen = torch.zeros((), dtype=torch.float64, device=device), 0
    start = time.monotonic()
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        loss = F.cross_entropy(model(images), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # Summed on the device: reading the loss every step would stall the GPU.
        loss_sum += loss.detach() * len(targets)
        seen += len(targets)
        step += 1
        if progress is not None:
            progress.update(step, images_per_step, memory_gb=peak_memory_gb(device))
    totals = torch.stack([loss_sum, torch.tensor(seen, dtype=torch.float64, device=device)])
    if dist.is_initialized():
        dist.all_reduce(totals)
    return (totals[0] / totals[1]).item(), totals[1].item() / (time.monotonic() - start), step


@torch.no_grad()
def evaluate(model, loader, device, num_classes):
    """Top-1 and top-5 accuracy (%) over this process's shard, summed over all processes.

    ``model`` is the unwrapped model, not DDP's wrapper: the loop runs no collective, so a process with an
    empty shard (fewer validation images than processes) cannot hang the others. Every process first takes
    rank 0's BatchNorm buffers, which rank 0's checkpoint holds (DDP's forward would have broadcast them).
    Hits are summed on the device and read once, so no validation batch waits for the GPU.
    """
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    model.eval()
    k = min(5, num_classes)
    hits, seen = torch.zeros(2, dtype=torch.int64, device=device), 0
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        correct = model(images).topk(k, dim=1).indices == targets[:, None]
        hits += torch.stack([correct[:, 0].sum(), correct.any(dim=1).sum()])
        seen += len(targets)
    counts = torch.cat([hits, torch.tensor([seen], device=device)])
    if dist.is_initialized():
        dist.all_reduce(counts)
    top1, top5, total = counts.tolist()
    return 100 * top1 / total, 100 * top5 / total
