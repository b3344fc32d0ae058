"""Detection transfer, one training per seed: ``python -m bt_transfer.transfer {voc,coco}``.

    python -m bt_transfer.transfer voc --weights resnet50.pth --seeds 1 2 3 4 5 --num-gpus 8 --out runs/transfer-voc
    python -m bt_transfer.transfer voc --num-gpus 2 --images-per-gpu 4 --dry-run   # what that run would train

On 1, 2, 4 or 8 GPUs the run is the paper's protocol (batch 16, its LR and schedule, BN over all 16 images);
--images-per-gpu accumulates micro-batches when 16/G images do not fit on a GPU, --schedule linear-scaling
trades the batch for a scaled LR and schedule instead. --dry-run prints the resolved config, deviations and
notes as JSON and exits, without GPUs, datasets or weights.

Before any training the datasets are checked and the weights converted strictly. Then each seed trains
in its own ``python -m bt_transfer.train_net`` process into ``OUT/seed<S>/`` and ends with ``result.json``:
metrics, seed, weights, the resolved config and its hash, and every departure from the paper's protocol in
words. A finished seed is skipped, an interrupted one resumes from its last checkpoint: rerun the same command
after a crash.

Supervised baseline (the paper's "Sup." row): pass torchvision's ImageNet ResNet-50 state dict
(``resnet50-*.pth``, downloaded by you beforehand; nothing is fetched here) with ``--label Sup.``.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from bt_transfer.convert.detectron2 import convert_file
from bt_transfer.convert.resnet50 import ConversionError
from bt_transfer.core.errors import UserError, command
from bt_transfer.core.fileio import atomic_write, sha256_file, sha256_json
from bt_transfer.core.progress import read_metrics
from bt_transfer.core.provenance import pretraining_deviations, read_pretraining_args
from bt_transfer.core.records import METRIC_KEYS, RESULT_FILE, ResultError, load_result, make_record, write_result
from bt_transfer.datasets.layout import (
    DatasetError, check_datasets, check_size_ranges, dataset_deviations, use_datasets_root,
)
from bt_transfer.detection.protocol import (
    CONFIGS, add_schedule_arguments, config_dict, processes, resolve_task, schedule_choice,
)


class TransferError(UserError, RuntimeError):
    """Anything that stops a transfer run; the message says what and where."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bt_transfer.transfer", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=CONFIGS, help="voc: Faster R-CNN on VOC07+12; coco: Mask R-CNN on COCO 2017")
    parser.add_argument("--weights", type=Path,
                        help="ResNet-50 checkpoint (any format bt_transfer.convert reads) or a converted .pkl "
                             "(required, except with --dry-run)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1], help="one training per seed (default: 1)")
    parser.add_argument("--out", type=Path,
                        help="output folder; seed S goes to OUT/seed<S>/ (required, except with --dry-run)")
    parser.add_argument("--label", help="how the report names these weights (default: the weights file name)")
    parser.add_argument("--num-gpus", type=int, default=1,
                        help="GPUs per machine (0: CPU); with --dry-run, the GPUs to plan for, on any machine")
    parser.add_argument("--num-machines", type=int, default=1)
    parser.add_argument("--machine-rank", type=int, default=0)
    parser.add_argument("--dist-url", default="auto", help="rendezvous of a multi-machine run (tcp://HOST:PORT)")
    add_schedule_arguments(parser)
    parser.add_argument("--datasets-root", type=Path,
                        help="datasets root (default: $DETECTRON2_DATASETS, else ./datasets)")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU-sized run (small images and ROI batch, 4 iterations, 2 images per process under "
                             "the linear scaling rule unless --schedule protocol); recorded as deviations")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved Detectron2 config, the deviations and the notes as JSON and exit: "
                             "nothing is trained or written, no GPU is needed, the datasets' deviations are listed "
                             "when the datasets are there")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="trailing Detectron2 KEY VALUE overrides")
    args = parser.parse_args(argv)
    missing = [option for option, value in (("--weights", args.weights), ("--out", args.out)) if value is None]
    if missing and not args.dry_run:
        parser.error(f"the following arguments are required: {', '.join(missing)} (except with --dry-run)")
    return args


def prepare_weights(weights, out):
    """The converted weights to train from: ``out/backbone.pkl`` or a given ``.pkl``."""
    if not weights.is_file():
        raise TransferError(f"weights {weights}: no such file")
    if weights.suffix == ".pkl":
        return weights.resolve()
    try:
        summary = convert_file(weights, out / "backbone.pkl")
    except ConversionError as e:
        raise TransferError(f"weights rejected by the converter: {e}") from None
    print(f"converted {weights} ({summary['format']}): {summary['tensors_converted']} tensors -> {summary['output']}")
    return Path(summary["output"]).resolve()


def finished_record(result_path, config, weights_sha):
    """The finished record of this config and weights at ``result_path``, or None if the seed has not finished.

    A record of other weights or another config there is an error: the folder belongs to another run.
    """
    if not result_path.is_file():
        return None
    try:
        record = load_result(result_path)
    except ResultError as e:
        raise TransferError(f"{e}; delete {result_path} to rerun that seed") from None
    if record["weights"]["sha256"] != weights_sha or record["config_sha256"] != sha256_json(config):
        raise TransferError(f"{result_path.parent} holds a finished run of other weights or another config; "
                            "choose another --out (or delete that folder)")
    return record


def check_resumable(folder, config):
    """An interrupted run may only be resumed with the config it started with."""
    written = folder / "config.yaml"
    if written.is_file() and yaml.safe_load(written.read_text()) != config:
        raise TransferError(f"{written} differs from this run's config: resuming would mix two configs; "
                            "choose another --out (or delete that folder)")


def final_metrics(folder, task):
    """The task's metrics from the last evaluation in Detectron2's ``metrics.json``."""
    path = folder / "metrics.json"
    wanted = METRIC_KEYS[task]
    evaluations = [r for r in read_metrics(path) if all(k in r for k in wanted)] if path.is_file() else []
    if not evaluations:
        raise TransferError(f"{path}: no evaluation with {', '.join(wanted)}; the run ended before evaluating")
    metrics = {key: evaluations[-1][key] for key in wanted}
    undefined = [key for key, value in metrics.items() if value != value]
    if undefined:
        # COCOeval reports -1 (Detectron2: NaN) for a size range without ground truth, e.g. APl on
        # images too small to hold a large (> 96x96 px) object; a result record holds numbers only.
        raise TransferError(f"{path}: {', '.join(undefined)} undefined on this test set (no ground truth in that "
                            "object-size range); the per-class and per-size results are in that file")
    return metrics


def seed_config(resolved, seed, folder, weights_pkl):
    """The run's resolved config for one seed: only where it writes, what it starts from and its seed differ."""
    cfg = resolved.cfg.clone()
    cfg.defrost()
    cfg.merge_from_list(["MODEL.WEIGHTS", str(weights_pkl), "OUTPUT_DIR", str(folder), "SEED", seed])
    cfg.freeze()
    return cfg


def train_net_command(args, config_file, resume):
    """The ``python -m bt_transfer.train_net`` process of one seed, given its resolved config file."""
    return [sys.executable, "-m", "bt_transfer.train_net", "--config-file", str(config_file), "--resolved",
            "--num-gpus", str(args.num_gpus), "--num-machines", str(args.num_machines),
            "--machine-rank", str(args.machine_rank), "--dist-url", args.dist_url, *["--resume"] * resume]


def run_seed(args, seed, resolved, weights_pkl, weights, deviations, datasets_root):
    folder = args.out / f"seed{seed}"
    cfg = seed_config(resolved, seed, folder, weights_pkl)
    config = config_dict(cfg)
    if finished_record(folder / RESULT_FILE, config, weights["sha256"]) is not None:
        print(f"seed {seed}: finished already ({folder / RESULT_FILE}), skipped")
        return
    check_resumable(folder, config)
    resume = (folder / "last_checkpoint").is_file()
    print(f"seed {seed}: {'resuming' if resume else 'training'} in {folder}", flush=True)
    # What the child runs is exactly what was resolved here (and what Detectron2 then writes back unchanged).
    with atomic_write(folder / "config.yaml") as f:
        f.write(cfg.dump())
    env = {**os.environ, "DETECTRON2_DATASETS": str(datasets_root)}
    if subprocess.run(train_net_command(args, folder / "config.yaml", resume), env=env).returncode != 0:
        raise TransferError(f"seed {seed} failed: see {folder / 'log.txt'}; rerun the same command to resume it")
    if args.machine_rank != 0:
        return
    record = make_record(
        args.task, final_metrics(folder, args.task), seed, weights, config, resolved.world_size,
        deviations=deviations, notes=resolved.notes,
        extra={"datasets_root": str(datasets_root), "resumed": resume, "converted_weights": str(weights_pkl)},
    )
    print(f"seed {seed}: {write_result(folder, record)}")


def resolve(args, cuda=None):
    """The run's resolved config, for this machine (``cuda`` None) or planned for GPUs (``cuda=True``)."""
    world_size, cpu = processes(args.num_gpus, args.num_machines, cuda)
    try:
        return resolve_task(args.task, world_size, smoke=args.smoke, opts=args.opts, cpu=cpu, **schedule_choice(args))
    except (AssertionError, KeyError, ValueError) as e:  # yacs: unknown key, wrong type; the batch split
        raise TransferError(f"config {CONFIGS[args.task].name} with these options: {e}") from None


def dry_run(args):
    """The resolved run as JSON-able data: config, deviations, notes. Reads, never writes; needs no GPU.

    Dataset deviations are included when the datasets are there, the pretraining's when ``--weights`` has
    its pretraining record beside it.
    """
    resolved = resolve(args, cuda=args.num_gpus > 0)
    root = use_datasets_root(args.datasets_root)
    names = list(dict.fromkeys(resolved.cfg.DATASETS.TRAIN + resolved.cfg.DATASETS.TEST))
    try:
        check_datasets(names)
        datasets = dataset_deviations(names)
        found = True
    except DatasetError:
        datasets, found = [], False
    pretraining = pretraining_deviations(read_pretraining_args(args.weights)) if args.weights else []
    return {
        "task": args.task, "world_size": resolved.world_size,
        "datasets": {"root": str(root), "found": found},
        "config": config_dict(resolved.cfg),
        "deviations": [*resolved.deviations, *datasets, *pretraining],
        "notes": list(resolved.notes),
    }


def run(args):
    """Check the datasets, convert the weights, then train and record each seed (``--dry-run``: print the
    resolved run instead).

    Raises TransferError (or a DatasetError) before any training on a missing dataset, missing weights or
    weights the converter rejects.
    """
    if args.dry_run:
        print(json.dumps(dry_run(args), indent=2))
        return
    if args.num_machines > 1 and args.dist_url == "auto":
        raise TransferError("--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0, "
                            "the same on every machine")
    root = use_datasets_root(args.datasets_root)
    resolved = resolve(args)
    names = list(dict.fromkeys(resolved.cfg.DATASETS.TRAIN + resolved.cfg.DATASETS.TEST))
    check_datasets(names)
    check_size_ranges(resolved.cfg.DATASETS.TEST)
    weights_pkl = prepare_weights(args.weights, args.out)
    weights = {"path": str(args.weights), "sha256": sha256_file(args.weights), "label": args.label or args.weights.name}
    deviations = [*resolved.deviations, *dataset_deviations(names),
                  *pretraining_deviations(read_pretraining_args(args.weights))]
    for seed in args.seeds:
        run_seed(args, seed, resolved, weights_pkl, weights, deviations, root)


@command
def main(argv=None):
    run(parse_args(argv))
