"""ImageNet evaluation of a ResNet-50 backbone: linear probe, and 1% / 10% semi-supervised fine-tuning.

    torchrun --nproc_per_node=8 -m pretrain.evaluate --mode linear --weights resnet50.pth --data imagenet \\
        --out runs/linear
    torchrun --nproc_per_node=8 -m pretrain.evaluate --mode semisup --percent 1 --subset-file 1percent.txt \\
        --weights resnet50.pth --data imagenet --out runs/semisup-1

The protocol (defaults, schedule, augmentation) is the official one, see ``pretrain.eval_protocol``;
anything else is allowed but recorded in ``result.json`` as a deviation. The run resumes from
``OUT/checkpoint.pth`` and writes ``args.json``, ``metrics.jsonl`` (one line per epoch), and at the end
``result.json``. Validation is sharded over the processes and the counts summed, so top-1 / top-5 are
exact whatever the number of processes.
"""
import argparse
import hashlib
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchvision import models

from bt_transfer.fileio import atomic_write, sha256_file, write_json
from bt_transfer.progress import MetricsLog, Progress, peak_memory_gb
from bt_transfer.results import make_record, write_result
from pretrain import eval_protocol, subsets
from pretrain.checkpoint import load_state, save_atomically
from pretrain.eval_data import EpochKeySampler, image_folders
from pretrain.distributed import cleanup, init_distributed

FC_KEYS = ("fc.weight", "fc.bias")
# A checkpoint may only be resumed by a run that would compute the same thing.
RESUME_KEYS = ("mode", "percent", "epochs", "batch_size", "lr_classifier", "lr_backbone", "weight_decay",
               "schedule", "image_size", "val_resize", "seed", "subset_seed", "weights_sha256", "subset_sha256")


class WeightsError(ValueError):
    """Weights that are not a torchvision ResNet-50 backbone; the message names the file and the keys."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("linear", "semisup"), required=True,
                        help="linear: frozen backbone, train the classifier; semisup: fine-tune everything on a subset")
    parser.add_argument("--percent", type=int, choices=(1, 10), help="semisup: percentage of labelled images")
    parser.add_argument("--weights", type=Path, required=True,
                        help="torchvision ResNet-50 state dict without fc (resnet50.pth from pretraining "
                             "or the official release)")
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and val/")
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds checkpoint.pth)")
    parser.add_argument("--label", help="how the report names the backbone (default: the weights file name)")
    parser.add_argument("--epochs", type=int, help="default 100 linear, 20 semisup")
    parser.add_argument("--batch-size", type=int, help="global batch over all processes (default 256)")
    parser.add_argument("--lr-classifier", type=float, help="default 0.3 linear, 0.5 semisup")
    parser.add_argument("--lr-backbone", type=float, help="semisup: default 0.005 cosine, 0.002 paper-step")
    parser.add_argument("--weight-decay", type=float, help="default 1e-6 linear, 0 semisup")
    parser.add_argument("--schedule", choices=("cosine", "paper-step"), default="cosine",
                        help="cosine (default, official code) or paper-step (semisup: the paper's x0.2 "
                             "after epochs 12 and 16 of 20)")
    parser.add_argument("--subset-file", type=Path,
                        help="semisup: SimCLR's 1percent.txt / 10percent.txt (default: a class-balanced "
                             "subset drawn from --subset-seed)")
    parser.add_argument("--subset-seed", type=int, default=0,
                        help="semisup without --subset-file: seed of the drawn subset (default 0)")
    parser.add_argument("--image-size", type=int, help="training and validation crop (default 224)")
    parser.add_argument("--val-resize", type=int, help="validation resize before the centre crop (default 256 for 224)")
    parser.add_argument("--workers", type=int, default=8,
                        help="data-loading processes per training process (default 8)")
    parser.add_argument("--seed", type=int, default=0,
                        help="classifier initialisation, shuffling, augmentation (default 0)")
    args = parser.parse_args(argv)
    try:
        config = eval_protocol.resolve(vars(args))
    except ValueError as e:
        parser.error(str(e))
    if config["mode"] == "linear":
        config["subset_seed"] = None
    config["label"] = config["label"] or args.weights.name  # as bt_transfer.transfer names them
    return config


def load_backbone(path, num_classes=1000):
    """torchvision ResNet-50 with the backbone weights of ``path`` and a fresh ``num_classes``-way
    classifier, weights N(0, 0.01) and bias 0.

    Only ``fc.weight`` / ``fc.bias`` may be absent; an ``fc`` in the file is ignored because the
    protocol always trains a new head.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file (expected resnet50.pth from `make pretrain` "
                           f"or the official Barlow Twins release)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean "not a state dict"
        raise WeightsError(f"--weights {path}: cannot be read as a PyTorch state dict ({e})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        nested = [k for k in ("model", "state_dict") if isinstance(state, dict) and k in state]
        hint = (f" (it holds {nested[0]!r}: a training checkpoint? pass the exported resnet50.pth)"
                if nested else "")
        raise WeightsError(f"--weights {path}: expected a dict of tensors{hint}")
    backbone = {k: v for k, v in state.items() if k not in FC_KEYS}
    model = models.resnet50(num_classes=num_classes)
    try:
        missing, unexpected = model.load_state_dict(backbone, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f"--weights {path}: tensor shapes differ from torchvision resnet50: {e}") from e
    missing = [k for k in missing if k not in FC_KEYS]
    if missing or unexpected:
        raise WeightsError(f"--weights {path}: not a torchvision ResNet-50 backbone (only fc.weight and "
                           f"fc.bias may be absent): missing keys {_key_list(missing)}; "
                           f"unexpected keys {_key_list(unexpected)}{_prefix_hint(unexpected)}")
    nn.init.normal_(model.fc.weight, mean=0.0, std=0.01)
    nn.init.zeros_(model.fc.bias)
    return model


def _key_list(keys, shown=20):
    if len(keys) <= shown:
        return f"[{', '.join(keys)}]"
    return f"[{', '.join(keys[:shown])}, ... ({len(keys) - shown} more)]"


def _prefix_hint(unexpected):
    prefixes = {k.split(".", 1)[0] for k in unexpected}
    if unexpected and len(prefixes) == 1 and prefixes.pop() in ("module", "backbone", "encoder", "model"):
        return f" (every key starts with '{unexpected[0].split('.', 1)[0]}.': convert or strip the prefix first)"
    return ""


def assert_backbone_unchanged(model, path):
    """Fail loudly unless every backbone parameter and BN buffer equals ``path`` bit for bit."""
    reference = torch.load(path, map_location="cpu", weights_only=True)
    current = model.state_dict()
    changed = [k for k, v in current.items() if k not in FC_KEYS and not torch.equal(v.cpu(), reference[k])]
    if changed:
        raise RuntimeError(f"linear evaluation changed the frozen backbone: {_key_list(changed)} differ from "
                           f"{path}; the result would not measure these weights and is not written")


def choose_subset(config, train, out, write):
    """Indices of the labelled subset and its description for the result record; a drawn subset
    is written (when ``write``) to ``out/subset.txt`` to be inspected or passed back as --subset-file."""
    files = train.files
    if config["subset_file"] is not None:
        chosen = subsets.read_subset_file(config["subset_file"])
        source, digest = str(config["subset_file"]), sha256_file(config["subset_file"])
    else:
        chosen = subsets.balanced_subset(files, config["percent"], config["subset_seed"])
        text = subsets.format_subset(chosen)
        source, digest = Path(out) / "subset.txt", hashlib.sha256(text.encode()).hexdigest()
        if write:
            with atomic_write(source) as f:
                f.write(text)
    indices = subsets.subset_indices(files, chosen, source, train.root)
    info = dict(source=str(source), sha256=digest, images=len(indices), generated=config["subset_file"] is None)
    return indices, info


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
    """Top-1 and top-5 accuracy (%) over this process's shard, summed over all processes."""
    model.eval()
    k = min(5, num_classes)
    counts = torch.zeros(3, dtype=torch.float64, device=device)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        hits = model(images).topk(k, dim=1).indices == targets[:, None]
        counts += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum(), torch.tensor(len(targets), device=device)])
    if dist.is_initialized():
        dist.all_reduce(counts)
    return (100 * counts[0] / counts[2]).item(), (100 * counts[1] / counts[2]).item()


def load_checkpoint(path, config):
    """The state saved after the last finished epoch, refused if it was written with other settings."""
    checkpoint = load_state(path)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("config"), dict):
        raise ValueError(f"{path}: not a checkpoint of pretrain.evaluate; use another --out")
    changed = [f"{k} {checkpoint['config'].get(k)!r} -> {config[k]!r}"
               for k in RESUME_KEYS if checkpoint["config"].get(k) != config[k]]
    if changed:
        raise ValueError(f"{path} belongs to a run with other settings ({'; '.join(changed)}): "
                         f"use another --out, or delete the checkpoint to start over")
    return checkpoint


def run(config):
    info = init_distributed()
    out, device = Path(config["out"]), info.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if config["batch_size"] % info.world_size:
        raise ValueError(f"--batch-size {config['batch_size']} is not divisible by the {info.world_size} processes")
    task = eval_protocol.task_name(config["mode"], config["percent"])
    linear = config["mode"] == "linear"

    train_set, val_set = image_folders(config["data"], config["image_size"], config["val_resize"], config["seed"])
    facts = dict(classes=len(train_set.classes), train_images=len(train_set), val_images=len(val_set))
    torch.manual_seed(config["seed"])
    model = load_backbone(config["weights"], num_classes=len(train_set.classes))
    subset = None
    if not linear:
        indices, subset = choose_subset(config, train_set, out, write=info.is_main)
        train_set = train_set.select(indices)
    config = dict(config, weights_sha256=sha256_file(config["weights"]),
                  subset_sha256=subset["sha256"] if subset else None, world_size=info.world_size)

    if linear:
        model.requires_grad_(False)
        model.fc.requires_grad_(True)
    model.to(device)
    optimizer = build_optimizer(model, config)
    start_epoch, best, last = 0, dict(top1=0.0, top5=0.0), None
    checkpoint_path = out / "checkpoint.pth"
    if checkpoint_path.is_file():
        checkpoint = load_checkpoint(checkpoint_path, config)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch, best, last = checkpoint["epoch"], checkpoint["best"], checkpoint["last"]
    trained = model
    if info.distributed:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    sampler, train_loader, val_loader = make_loaders(train_set, val_set, config, info)

    metrics, progress = None, None
    steps = len(train_loader)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "args.json", {k: _jsonable(v) for k, v in config.items()})
        metrics = MetricsLog(out / "metrics.jsonl")
        progress = Progress(config["epochs"] * steps, name=task, start=start_epoch * steps)
    step = start_epoch * steps
    for epoch in range(start_epoch, config["epochs"]):
        scale = eval_protocol.lr_scale(config["schedule"], epoch, config["epochs"])
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * scale
        sampler.set_epoch(epoch)
        # The frozen backbone stays in eval mode so its BN statistics cannot move.
        trained.train(not linear)
        loss, images_per_s, step = train_one_epoch(trained, train_loader, optimizer, device, progress, step,
                                                   config["batch_size"])
        top1, top5 = evaluate(trained, val_loader, device, len(val_set.classes))
        last = dict(top1=top1, top5=top5)
        best = dict(top1=max(best["top1"], top1), top5=max(best["top5"], top5))
        if linear:
            assert_backbone_unchanged(model, config["weights"])
        if info.is_main:
            lrs = dict(lr=optimizer.param_groups[0]["lr"])
            if not linear:
                lrs["lr_backbone"] = optimizer.param_groups[1]["lr"]
            metrics.write(epoch=epoch + 1, loss=loss, top1=top1, top5=top5, images_per_s=images_per_s, **lrs)
            summary = f"epoch {epoch + 1} loss {loss:.4f} top1 {top1:.2f} top5 {top5:.2f}"
            progress.update(step, config["batch_size"], extra=summary, memory_gb=peak_memory_gb(device), force=True)
            save_atomically(checkpoint_path, dict(epoch=epoch + 1, model=model.state_dict(),
                                                  optimizer=optimizer.state_dict(), best=best, last=last,
                                                  config={k: _jsonable(config[k]) for k in RESUME_KEYS}))
    if linear:  # also covers a finished run restarted from its last checkpoint
        assert_backbone_unchanged(model, config["weights"])
    if not info.is_main:
        return None
    metrics.close()
    record = make_record(
        task=task,
        metrics=dict(top1=last["top1"], top5=last["top5"], top1_best=best["top1"], top5_best=best["top5"]),
        seed=config["seed"],
        weights=dict(path=str(config["weights"]), sha256=config["weights_sha256"], label=config["label"]),
        config={k: _jsonable(v) for k, v in config.items()},
        world_size=info.world_size,
        deviations=eval_protocol.deviations(config, facts, subset),
        extra=dict(facts, epochs=config["epochs"], **({"subset": subset} if subset else {})),
    )
    path = write_result(out, record)
    print(f"{task}: top-1 {last['top1']:.2f} top-5 {last['top5']:.2f} "
          f"(best {best['top1']:.2f} / {best['top5']:.2f}) -> {path}", file=sys.stderr)
    return record


def _jsonable(value):
    return str(value) if isinstance(value, Path) else value


def main(argv=None):
    config = parse_args(argv)
    try:
        return run(config)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
