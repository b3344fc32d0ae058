"""Detection transfer, one training per seed: ``python -m bt_transfer.transfer {voc,coco}``.

    python -m bt_transfer.transfer voc --weights resnet50.pth --seeds 1 2 3 4 5 --num-gpus 8 --out runs/transfer-voc
    python -m bt_transfer.transfer voc --num-gpus 2 --images-per-gpu 4 --dry-run   # what that run would train

Everything is checked before anything is written; then the run claims OUT (a lock and ``run.json``: task,
weights, resolved config). Each seed trains in its own ``python -m bt_transfer.train_net`` process into
``OUT/seed<S>/`` and ends with ``result.json``; a finished seed is skipped, an interrupted one resumes exactly:
rerun the same command after a crash, or with more seeds. For the paper's "Sup." row pass torchvision's
IMAGENET1K_V1 ``resnet50-0676ba61.pth`` (downloaded by you) with ``--label Sup.``.
"""
import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from bt_transfer.convert.detectron2 import convert_file
from bt_transfer.convert.formats import FORMATS
from bt_transfer.convert.resnet50 import ConversionError
from bt_transfer.core.children import dying_with_this_process
from bt_transfer.core.errors import UserError, command
from bt_transfer.core.fileio import atomic_write, sha256_file, sha256_json
from bt_transfer.core.progress import read_metrics
from bt_transfer.core.provenance import (
    pretraining_deviations, pretraining_provenance, read_pretraining_args, supervised_weights_deviations,
)
from bt_transfer.core.records import METRIC_KEYS, RESULT_FILE, ResultError, load_result, make_record, write_result
from bt_transfer.core.rundir import RunFolderError, claim
from bt_transfer.datasets.checks import check_contents
from bt_transfer.datasets.layout import (
    DatasetError, check_datasets, check_size_ranges, dataset_deviations, use_datasets_root,
)
from bt_transfer.detection.machines import MACHINES_DIR, machines_for
from bt_transfer.detection.protocol import (
    CONFIGS, add_schedule_arguments, config_dict, flat_config, processes, resolve_task, schedule_choice,
)
from bt_transfer.detection.solver import check_solver


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
    parser.add_argument("--format", default="auto", dest="fmt", choices=("auto", *FORMATS),
                        help="layout of --weights (default: auto; see python -m bt_transfer.convert --help)")
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


def check_numbers(args):
    """Refuse command-line numbers no run can use, naming the option."""
    problems = [f"{option} {value}: expected {what}" for option, value, ok, what in (
        ("--num-gpus", args.num_gpus, args.num_gpus >= 0, "0 (CPU) or more"),
        ("--num-machines", args.num_machines, args.num_machines >= 1, "1 or more"),
        ("--machine-rank", args.machine_rank, 0 <= args.machine_rank < max(args.num_machines, 1),
         f"0 to --num-machines - 1 ({args.num_machines - 1})"),
    ) if not ok]
    negative = [seed for seed in args.seeds if seed < 0]
    if negative:  # Detectron2 would draw a fresh random seed: the run could not be repeated
        problems.append(f"--seeds {' '.join(map(str, negative))}: expected seeds of 0 or more")
    if len(set(args.seeds)) != len(args.seeds):
        problems.append(f"--seeds {' '.join(map(str, args.seeds))}: a seed given twice")
    if problems:
        raise TransferError("; ".join(problems))


def converted_weights(weights, scratch, fmt="auto"):
    """(the Detectron2 weights to train from, made before OUT is touched: a given ``.pkl`` as it is, anything
    else converted strictly into the folder ``scratch``; the checkpoint's layout)."""
    if not weights.is_file():
        raise TransferError(f"weights {weights}: no such file")
    if weights.suffix == ".pkl":
        return weights, "detectron2"
    try:
        summary = convert_file(weights, scratch / "backbone.pkl", fmt)
    except ConversionError as e:
        raise TransferError(f"weights rejected by the converter: {e}") from None
    print(f"converted {weights} ({summary['format']}): {summary['tensors_converted']} tensors")
    return scratch / "backbone.pkl", summary["format"]


def content_name(weights_pkl):
    """The file name converted weights have in OUT: made of their content, so no run replaces another's."""
    return f"backbone-{sha256_file(weights_pkl)[:12]}.pkl"


def place_weights(weights_pkl, out):
    """Copy ``weights_pkl`` into ``out`` under its ``content_name`` (atomically; kept if already there) and
    check that the file there holds what its name says."""
    target = out / content_name(weights_pkl)
    if not target.is_file():
        with open(weights_pkl, "rb") as source, atomic_write(target, "wb") as copy:
            shutil.copyfileobj(source, copy)
    if content_name(target) != target.name:
        raise TransferError(f"{target}: its content does not match its name (changed while copied, or edited); "
                            "delete it and rerun")
    return target


# Where each seed writes, what it starts from and its seed: not what makes two runs comparable.
PER_SEED_KEYS = ("OUTPUT_DIR", "SEED", "MODEL.WEIGHTS")


def run_identity(task, weights_sha, resolved):
    """What makes the seeds of a run comparable, as ``run.json`` records it: the task, the weights' content,
    the process count and the resolved config without its per-seed keys. More seeds continue the same run."""
    config = {key: value for key, value in flat_config(resolved.cfg).items() if key not in PER_SEED_KEYS}
    return {"task": task, "weights_sha256": weights_sha, "world_size": resolved.world_size, **config}


@contextlib.contextmanager
def holding_out(args, identity):
    """Machine 0 claims OUT for this run (``bt_transfer.core.rundir.claim``); the other machines hold nothing
    (they check machine 0's decisions instead)."""
    if args.machine_rank != 0:
        yield
        return
    try:
        with claim(args.out, f"transfer-{args.task}", identity, may_exist=(MACHINES_DIR,)):
            yield
    except RunFolderError as e:
        own = f"runs/transfer-{args.task}-{args.weights.stem}"
        raise TransferError(f"{e} (with make: OUT={own}, or --out {own})") from None


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


def seed_view(folder, config, weights_sha, identity, weights_pkl):
    """What this machine sees of one seed: the run, the converted weights, and what to do (skip when finished,
    resume from the checkpoint named in ``last_checkpoint``, else train); raises TransferError when the folder
    holds another run's seed."""
    finished = finished_record(folder / RESULT_FILE, config, weights_sha) is not None
    if not finished:
        check_resumable(folder, config)
    last = folder / "last_checkpoint"
    checkpoint = last.read_text().strip() if not finished and last.is_file() else None
    return {**identity, "converted weights": weights_pkl.name if weights_pkl.is_file() else "missing",
            "action": "skip" if finished else "resume" if checkpoint else "train", "checkpoint": checkpoint}


@dataclass(frozen=True)
class Run:
    """What every seed of a run shares, once checked."""

    args: argparse.Namespace
    resolved: object  # protocol.ResolvedConfig
    weights: dict  # path, sha256 and label of the given weights, as records hold them
    weights_pkl: Path  # the converted weights in OUT
    identity: dict  # run_identity
    deviations: list
    pretraining: dict | None  # provenance of our own pretraining behind the weights (None: not ours)
    datasets_root: Path
    machines: object  # machines.Alone, Lead or Follower
    scratch: Path  # this machine's own temporary folder


def run_seed(run, seed):
    args, resolved, weights, weights_pkl = run.args, run.resolved, run.weights, run.weights_pkl
    folder = args.out / f"seed{seed}"
    cfg = seed_config(resolved, seed, folder, weights_pkl)
    config = config_dict(cfg)
    try:
        view = seed_view(folder, config, weights["sha256"], run.identity, weights_pkl)
    except TransferError as e:
        view = {"error": str(e)}
    action = run.machines.agree(seed, view)["action"]  # raises on every machine unless they all see the same
    if action == "skip":
        print(f"seed {seed}: finished already ({folder / RESULT_FILE}), skipped")
        return
    resume = action == "resume"
    print(f"seed {seed}: {'resuming' if resume else 'training'} in {folder}", flush=True)
    # What the child runs is exactly what was resolved here (and what Detectron2 then writes back unchanged);
    # on other machines than 0 into a file of their own, outside OUT.
    config_file = folder / "config.yaml" if args.machine_rank == 0 else run.scratch / f"seed{seed}.yaml"
    with atomic_write(config_file) as f:
        f.write(cfg.dump())
    env = {**os.environ, "DETECTRON2_DATASETS": str(run.datasets_root)}
    child = subprocess.run(train_net_command(args, config_file, resume), env=env,
                           preexec_fn=dying_with_this_process())
    if child.returncode != 0:
        raise TransferError(f"seed {seed} failed: see {folder / 'log.txt'}; rerun the same command to resume it")
    if args.machine_rank != 0:
        return
    record = make_record(
        args.task, final_metrics(folder, args.task), seed, weights, config, resolved.world_size,
        deviations=run.deviations, notes=resolved.notes,
        extra={"datasets_root": str(run.datasets_root), "resumed": resume, "converted_weights": str(weights_pkl),
               **({"pretraining": run.pretraining} if run.pretraining else {})},
    )
    print(f"seed {seed}: {write_result(folder, record)}")


def dataset_names(cfg):
    """The datasets a run reads, each once: the training ones, then the evaluated ones."""
    return list(dict.fromkeys(cfg.DATASETS.TRAIN + cfg.DATASETS.TEST))


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
    names = dataset_names(resolved.cfg)
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
    """Check the options, datasets and weights, claim OUT, then train and record each seed (``--dry-run``:
    print the resolved run instead).

    Raises TransferError (or a DatasetError) before anything is written on a bad option or config value, a
    missing dataset, missing weights, weights the converter rejects, or an OUT that is busy or holds another run.
    """
    check_numbers(args)
    if args.dry_run:
        print(json.dumps(dry_run(args), indent=2))
        return
    if args.num_machines > 1 and args.dist_url == "auto":
        raise TransferError("--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0, "
                            "the same on every machine")
    root = use_datasets_root(args.datasets_root)
    resolved = resolve(args)
    check_solver(resolved.cfg)
    names = dataset_names(resolved.cfg)
    check_contents(names, evaluated=resolved.cfg.DATASETS.TEST)  # both splits: every annotation and image
    check_size_ranges(resolved.cfg.DATASETS.TEST)
    machines = machines_for(args.out, args.machine_rank, args.num_machines)
    with tempfile.TemporaryDirectory(prefix="bt-transfer-") as scratch:
        scratch = Path(scratch)
        source, fmt = converted_weights(args.weights, scratch, args.fmt)
        weights = {"path": str(args.weights), "sha256": sha256_file(args.weights),
                   "label": args.label or args.weights.name, "format": fmt}
        pretraining = read_pretraining_args(args.weights)
        deviations = [*resolved.deviations, *dataset_deviations(names),
                      *pretraining_deviations(pretraining), *supervised_weights_deviations(fmt, weights["sha256"])]
        identity = run_identity(args.task, weights["sha256"], resolved)
        with holding_out(args, identity):
            weights_pkl = place_weights(source, args.out) if args.machine_rank == 0 else args.out / content_name(source)
            machines.start()
            run = Run(args, resolved, weights, weights_pkl, identity, deviations, pretraining_provenance(pretraining),
                      root, machines, scratch)
            for seed in args.seeds:
                run_seed(run, seed)


@command
def main(argv=None):
    run(parse_args(argv))
