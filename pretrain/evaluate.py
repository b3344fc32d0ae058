"""ImageNet evaluation of a ResNet-50 backbone: linear probe, and 1% / 10% semi-supervised fine-tuning.

    torchrun --nproc_per_node=8 -m pretrain.evaluate --mode linear --weights resnet50.pth --data imagenet \\
        --out runs/linear
    torchrun --nproc_per_node=8 -m pretrain.evaluate --mode semisup --percent 1 --subset-file 1percent.txt \\
        --weights resnet50.pth --data imagenet --out runs/semisup-1

The protocol (defaults, schedule, augmentation) is the official one, see ``pretrain.eval_protocol``;
anything else is allowed but recorded in ``result.json`` as a deviation. OUT belongs to one run: it is
claimed before anything is written (bt_transfer.core.rundir; its identity is ``run_identity``), so the
same command resumes from ``OUT/checkpoint.pth`` and another one is refused, naming each changed setting.
The run writes ``args.json``, ``metrics.jsonl`` (one line per epoch), and at the end ``result.json``.
Validation is sharded over the processes and the counts summed, so top-1 / top-5 are exact whatever the
number of processes.

Semi-supervised fine-tuning normalises over the global batch whatever the number of GPUs (SyncBatchNorm
across processes on CUDA), as one process does. The official evaluate.py used plain BatchNorm per GPU, i.e.
over 256 / GPUs images (32 on its 8 GPUs). SyncBatchNorm needs CUDA: a multi-process CPU run (the tests)
normalises per process and records that as a deviation.
"""
import argparse
import hashlib
import sys
from pathlib import Path

import torch
from torch import nn
from torchvision import models

from bt_transfer.convert.formats import FORMATS, read_resnet50
from bt_transfer.convert.resnet50 import BN_COUNTER
from bt_transfer.core.errors import command
from bt_transfer.core.fileio import atomic_write, sha256_file, write_json
from bt_transfer.core.options import non_negative_float, non_negative_int, positive_float, positive_int
from bt_transfer.core.progress import MetricsLog, Progress, peak_memory_gb
from bt_transfer.core.text import listing
from bt_transfer.core.provenance import (
    pretraining_deviations, pretraining_provenance, read_pretraining_args, supervised_weights_deviations,
)
from bt_transfer.core.records import make_record, write_result
from pretrain import eval_protocol, subsets
from pretrain.checkpoint import CheckpointError, load_state, save_atomically
from pretrain.classifier import FC_KEYS, build_optimizer, evaluate, make_loaders, train_one_epoch
from pretrain.distributed import cleanup, init_distributed, require_same_everywhere
from pretrain.eval_data import image_folders
from pretrain.gpu_batch import split_batch
from pretrain.run_folder import claim_for_all

# What defines an evaluation run (with its data, see run_identity): every setting that changes its numbers,
# not --workers or --label. A folder holds one such run, resumed only by a command that would compute the same.
IDENTITY_KEYS = ("mode", "percent", "epochs", "batch_size", "lr_classifier", "lr_backbone", "weight_decay",
                 "schedule", "image_size", "val_resize", "seed", "subset_seed", "weights_sha256", "weights_format",
                 "subset_sha256")
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "best", "last")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("linear", "semisup"), required=True,
                        help="linear: frozen backbone, train the classifier; semisup: fine-tune everything on a subset")
    parser.add_argument("--percent", type=int, choices=(1, 10), help="semisup: percentage of labelled images")
    parser.add_argument("--weights", type=Path, required=True,
                        help="ResNet-50 checkpoint in any layout bt_transfer.convert reads (resnet50.pth from "
                             "pretraining or the official release, checkpoint.pth, torchvision, MoCo, VISSL...)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS),
                        help="layout of --weights (default: auto)")
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/ and val/")
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumed if it holds checkpoint.pth)")
    parser.add_argument("--label", help="how the report names the backbone (default: the weights file name)")
    parser.add_argument("--epochs", type=positive_int, help="default 100 linear, 20 semisup")
    parser.add_argument("--batch-size", type=positive_int, help="global batch over all processes (default 256)")
    parser.add_argument("--lr-classifier", type=positive_float, help="default 0.3 linear, 0.5 semisup")
    parser.add_argument("--lr-backbone", type=non_negative_float,
                        help="semisup: default 0.005 cosine, 0.002 paper-step")
    parser.add_argument("--weight-decay", type=non_negative_float, help="default 1e-6 linear, 0 semisup")
    parser.add_argument("--schedule", choices=("cosine", "paper-step"), default="cosine",
                        help="cosine (default, official code) or paper-step (semisup: the paper's x0.2 "
                             "after epochs 12 and 16 of 20)")
    parser.add_argument("--subset-file", type=Path,
                        help="semisup: SimCLR's 1percent.txt / 10percent.txt (default: a class-balanced "
                             "subset drawn from --subset-seed)")
    parser.add_argument("--subset-seed", type=non_negative_int, default=0,
                        help="semisup without --subset-file: seed of the drawn subset (default 0)")
    parser.add_argument("--image-size", type=positive_int, help="training and validation crop (default 224)")
    parser.add_argument("--val-resize", type=positive_int,
                        help="validation resize before the centre crop (default 256 for 224)")
    parser.add_argument("--workers", type=non_negative_int, default=8,
                        help="data-loading processes per training process (default 8)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
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


def load_backbone(path, num_classes=1000, fmt="auto"):
    """(torchvision ResNet-50 with the backbone of checkpoint ``path`` and a fresh ``num_classes``-way classifier,
    the backbone's tensors as read, the checkpoint's layout). Any layout ``bt_transfer.convert`` reads, with the
    same strict checks (NaN or Inf included); the classifier starts from N(0, 0.01) weights and zero bias, as the
    protocol trains a new head."""
    fmt, trunk, _ = read_resnet50(path, fmt)
    model = models.resnet50(num_classes=num_classes)
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert not unexpected and all(k in FC_KEYS or k.endswith(BN_COUNTER) for k in missing), (missing, unexpected)
    nn.init.normal_(model.fc.weight, mean=0.0, std=0.01)
    nn.init.zeros_(model.fc.bias)
    return model, trunk, fmt


def assert_backbone_unchanged(model, trunk):
    """Fail loudly unless every backbone parameter and BN buffer equals ``trunk`` (as read) bit for bit."""
    current = model.state_dict()
    changed = [k for k, v in trunk.items() if not torch.equal(current[k].cpu(), v)]
    if changed:
        raise RuntimeError(f"linear evaluation changed the frozen backbone: {listing(changed)} differ from the "
                           "weights read; the result would not measure these weights and is not written")


def choose_subset(config, train, out):
    """(indices of the labelled subset, its description for the result record, the text of a drawn subset to
    save as ``out/subset.txt`` once the run holds OUT, or None for a subset file). A drawn subset is saved to be
    inspected or passed back as --subset-file."""
    files = train.files
    drawn = None
    if config["subset_file"] is not None:
        chosen = subsets.read_subset_file(config["subset_file"])
        source, digest = str(config["subset_file"]), sha256_file(config["subset_file"])
    else:
        chosen = subsets.balanced_subset(files, config["percent"], config["subset_seed"])
        drawn = subsets.format_subset(chosen)
        source, digest = Path(out) / "subset.txt", hashlib.sha256(drawn.encode()).hexdigest()
    indices = subsets.subset_indices(files, chosen, source, train.root)
    info = dict(source=str(source), sha256=digest, images=len(indices), generated=config["subset_file"] is None)
    return indices, info, drawn


def load_checkpoint(path):
    """The state saved after the last finished epoch (the claim of OUT made sure it is this run's)."""
    checkpoint = load_state(path)
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in CHECKPOINT_KEYS):
        raise CheckpointError(f"{path}: not a checkpoint of pretrain.evaluate; use another --out")
    return checkpoint


def prepare(config, info):
    """The datasets, model and labelled subset of a run (and the text of a drawn subset, see ``choose_subset``),
    and its config with the hashes that identify it. Reads, never writes: everything that can be wrong with the
    inputs fails here, before the run claims OUT."""
    train_set, val_set = image_folders(config["data"], config["image_size"], config["val_resize"], config["seed"])
    facts = dict(classes=len(train_set.classes), train_images=len(train_set), val_images=len(val_set))
    torch.manual_seed(config["seed"])
    model, trunk, fmt = load_backbone(config["weights"], len(train_set.classes), config["format"])
    subset, drawn = None, None
    if config["mode"] == "semisup":
        indices, subset, drawn = choose_subset(config, train_set, config["out"])
        train_set = train_set.select(indices)
    config = dict(config, weights_sha256=sha256_file(config["weights"]), weights_format=fmt,
                  subset_sha256=subset["sha256"] if subset else None, world_size=info.world_size)
    return config, model, trunk, train_set, val_set, facts, subset, drawn


def run_identity(config, facts):
    """What defines this evaluation run (``bt_transfer.core.rundir``): the settings of IDENTITY_KEYS and the data
    (its folder and ``facts``: class and image counts)."""
    return {**{key: _jsonable(config[key]) for key in IDENTITY_KEYS}, "data": str(Path(config["data"]).resolve()),
            **facts}


def resume(path, model, optimizer, info):
    """(first epoch to train, best and last accuracies) after restoring ``path`` if it exists. Rank 0's
    epoch is the run's: a process that resumed another one stops them all (else they would train different
    epochs and wait for each other forever)."""
    epoch, best, last = 0, dict(top1=0.0, top5=0.0), None
    if path.is_file():
        checkpoint = load_checkpoint(path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        epoch, best, last = checkpoint["epoch"], checkpoint["best"], checkpoint["last"]
    require_same_everywhere(epoch, info, f"the epoch resumed from {path}",
                            "--out must be a folder every process sees (shared storage), so that all resume from "
                            "the same checkpoint.pth")
    return epoch, best, last


def trainable(model, linear, info):
    """The model as the run trains it: linear evaluation freezes all but the classifier; fine-tuning on several
    GPUs normalises over the global batch (SyncBatchNorm, same parameter and buffer names)."""
    if linear:
        model.requires_grad_(False)
        model.fc.requires_grad_(True)
    elif info.distributed and info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def batch_norm_deviations(config, info):
    """How a semi-supervised run's batch statistics depart from the global batch, in words (empty if they do not)."""
    if config["mode"] != "semisup" or not info.distributed or info.device.type == "cuda":
        return []
    return [f"batch norm over {config['batch_size'] // info.world_size} images per process ({info.world_size} "
            f"processes on {info.device.type}, where SyncBatchNorm is unavailable) instead of the global batch of "
            f"{config['batch_size']}"]


def run(config):
    info = init_distributed()
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    split_batch(config["batch_size"], info.world_size, "ARGS='--batch-size {}'")
    task = eval_protocol.task_name(config["mode"], config["percent"])
    config, model, trunk, train_set, val_set, facts, subset, drawn = prepare(config, info)
    with claim_for_all(Path(config["out"]), task, run_identity(config, facts), info) as out:
        if drawn is not None and info.is_main:
            with atomic_write(out / "subset.txt") as f:
                f.write(drawn)
        return train_and_record(config, info, task, model, trunk, train_set, val_set, facts, subset)


def train_and_record(config, info, task, model, trunk, train_set, val_set, facts, subset):
    """Train (or resume) the run prepared by ``prepare``, in the folder it holds; rank 0 returns the record."""
    out, device = Path(config["out"]), info.device
    linear = config["mode"] == "linear"
    model = trainable(model, linear, info).to(device)
    optimizer = build_optimizer(model, config)
    checkpoint_path = out / "checkpoint.pth"
    start_epoch, best, last = resume(checkpoint_path, model, optimizer, info)
    trained = model
    if info.distributed:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    sampler, train_loader, val_loader = make_loaders(train_set, val_set, config, info)

    metrics, progress = None, None
    steps = len(train_loader)
    if info.is_main:
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
        top1, top5 = evaluate(model, val_loader, device, len(val_set.classes))
        last = dict(top1=top1, top5=top5)
        best = dict(top1=max(best["top1"], top1), top5=max(best["top5"], top5))
        if linear:
            assert_backbone_unchanged(model, trunk)
        if info.is_main:
            lrs = dict(lr=optimizer.param_groups[0]["lr"])
            if not linear:
                lrs["lr_backbone"] = optimizer.param_groups[1]["lr"]
            metrics.write(epoch=epoch + 1, loss=loss, top1=top1, top5=top5, images_per_s=images_per_s, **lrs)
            summary = f"epoch {epoch + 1} loss {loss:.4f} top1 {top1:.2f} top5 {top5:.2f}"
            progress.update(step, config["batch_size"], extra=summary, memory_gb=peak_memory_gb(device), force=True)
            save_atomically(checkpoint_path, dict(epoch=epoch + 1, model=model.state_dict(),
                                                  optimizer=optimizer.state_dict(), best=best, last=last))
    if linear:  # also covers a finished run restarted from its last checkpoint
        assert_backbone_unchanged(model, trunk)
    if not info.is_main:
        return None
    metrics.close()
    return write_record(config, task, last, best, facts, subset, batch_norm_deviations(config, info))


def write_record(config, task, last, best, facts, subset, run_deviations):
    """``OUT/result.json`` of a finished run: the last epoch's accuracies (and the best ones), every deviation
    (``run_deviations``: those that come from how the run was launched; the pretraining's and the supervised
    weights' included), and the pretraining's provenance in ``extra``."""
    pretraining = read_pretraining_args(config["weights"])
    provenance = pretraining_provenance(pretraining)
    record = make_record(
        task=task,
        metrics=dict(top1=last["top1"], top5=last["top5"], top1_best=best["top1"], top5_best=best["top5"]),
        seed=config["seed"],
        weights=dict(path=str(config["weights"]), sha256=config["weights_sha256"], label=config["label"],
                     format=config["weights_format"]),
        config={k: _jsonable(v) for k, v in config.items()},
        world_size=config["world_size"],
        deviations=[*eval_protocol.deviations(config, facts, subset), *run_deviations,
                    *pretraining_deviations(pretraining),
                    *supervised_weights_deviations(config["weights_format"], config["weights_sha256"])],
        extra=dict(facts, epochs=config["epochs"], **({"subset": subset} if subset else {}),
                   **({"pretraining": provenance} if provenance else {})),
    )
    path = write_result(config["out"], record)
    print(f"{task}: top-1 {last['top1']:.2f} top-5 {last['top5']:.2f} "
          f"(best {best['top1']:.2f} / {best['top5']:.2f}) -> {path}", file=sys.stderr)
    return record


def _jsonable(value):
    return str(value) if isinstance(value, Path) else value


@command
def main(argv=None):
    config = parse_args(argv)
    try:
        return run(config)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
