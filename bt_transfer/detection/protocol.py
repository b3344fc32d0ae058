"""The detection protocol as data, resolved once: the paper's configs, the CPU-sized preset, and the config a run
of a given world size trains with, with every departure from the protocol in words.

The protocol is the config file itself (``detection_configs/``, Appendix C.2 of the paper, after MoCo's C4
set-up): 16 images per iteration, BN statistics over all 16 (SyncBN over 8 GPUs x 2 images). 16/G images on
each of G GPUs with SyncBN across them (plain BN over all 16 on one process) is the same protocol, and the
default. Resolution order: the file, then the schedule (``protocol``: the file's; ``linear-scaling``: the
rule of ``scaling.py``), then the overrides (final values: ``SOLVER.MAX_ITER 4`` means 4 iterations), then
the split of the batch over processes and micro-batches (gradient accumulation when fewer images fit on a
GPU), then plain BN instead of SyncBN on one process. Deviations and notes are stated last, from the final
values. ``python -m bt_transfer.transfer`` resolves a run here and hands the child the resolved config.
"""
from dataclasses import dataclass
from pathlib import Path

import yaml
from detectron2.config import get_cfg

from bt_transfer.core.errors import UserError
from bt_transfer.core.options import positive_int
from bt_transfer.detection.scaling import (
    IMAGES_PER_GPU, PROTOCOL_GPUS, Schedule, describe, kept_by_run, linear_scaling, micro_batches,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "detection_configs"
CONFIGS = {"voc": CONFIG_DIR / "voc_R_50_C4_24k.yaml", "coco": CONFIG_DIR / "coco_R_50_C4_1x.yaml"}
SCHEDULES = ("protocol", "linear-scaling")

# CPU-sized runs for tests and the demo: small images, a small ROI batch, few proposals, four steps. Its batch
# is 2 images per process under the linear scaling rule (``resolve_task``), so it splits over any GPU count.
SMOKE_OPTS = (
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MAX_SIZE_TEST", "160", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    # On CPU, inference time goes into res5 and the mask head, run on every proposal and detection.
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "20",
    "SOLVER.STEPS", "()",  # no LR drop in so few steps
    "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", "TEST.PRECISE_BN.NUM_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
)

# This suite's one key beyond Detectron2's: micro-batches per iteration, whose gradients are accumulated
# before the optimizer step. SOLVER.IMS_PER_BATCH stays the images of one optimizer step.
ACCUMULATION_KEY = "SOLVER.ACCUMULATION_STEPS"

# Keys that say where and how fast a run goes, not what it computes: never protocol deviations.
BOOKKEEPING_KEYS = {
    "OUTPUT_DIR", "SEED", "MODEL.WEIGHTS", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "CUDNN_BENCHMARK", "VIS_PERIOD",
}


@dataclass(frozen=True)
class ResolvedConfig:
    cfg: object  # a frozen detectron2 CfgNode
    deviations: tuple  # every departure from the protocol config, in words
    notes: tuple  # what differs from the protocol's 8 GPUs without departing from the protocol
    world_size: int


def new_config():
    """Detectron2's default config with this suite's key (``SOLVER.ACCUMULATION_STEPS``, default 1): read
    every config file of a run into this, so the resolving parent and the training child agree."""
    cfg = get_cfg()
    cfg.SOLVER.ACCUMULATION_STEPS = 1
    return cfg


def _flatten(node, prefix=""):
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _split_refusal(batch, world_size, schedule):
    """One line saying why a batch does not split over the processes and which options change that."""
    counts = [str(n) for n in range(1, batch + 1) if batch % n == 0]
    counts = ", ".join(counts[:-1]) + f" or {counts[-1]}" if len(counts) > 1 else counts[0]
    rule = ("" if schedule == "linear-scaling" else
            f", --schedule linear-scaling ({IMAGES_PER_GPU} images per GPU, LR and schedule scaled)")
    return (f"SOLVER.IMS_PER_BATCH {batch} does not split over {world_size} processes: use {counts} processes "
            f"(--num-gpus x --num-machines){rule}, or a multiple of {world_size} in --opts SOLVER.IMS_PER_BATCH")


def resolve_config(config_file, opts=(), world_size=1, schedule="protocol", images_per_gpu=None):
    """The config a run of ``world_size`` processes trains with, and how it departs from the protocol.

    ``schedule``: ``protocol`` (also None) keeps the file's batch, LR and schedule whatever the number of
    processes; ``linear-scaling`` applies the rule with ``images_per_gpu`` (default 2) per process.
    ``images_per_gpu``: the most images one GPU holds; fewer than its share of the batch means gradient
    accumulation over micro-batches (``SOLVER.ACCUMULATION_STEPS``). The protocol is the config file
    itself: any key that ends up different, beyond bookkeeping and what a sentence explains, is listed.
    Raises ValueError when the result cannot run (a batch that does not split over the processes).
    """
    schedule = schedule or "protocol"
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    cfg = new_config()
    cfg.merge_from_file(str(config_file))
    protocol = _flatten(cfg)
    protocol_schedule = Schedule.from_solver(cfg.SOLVER)

    rule = None
    if schedule == "linear-scaling":
        rule = linear_scaling(protocol_schedule, world_size, images_per_gpu or IMAGES_PER_GPU)
        cfg.merge_from_list(rule.to_opts())
    cfg.merge_from_list(list(opts))

    batch = cfg.SOLVER.IMS_PER_BATCH
    if batch % world_size:
        raise ValueError(_split_refusal(batch, world_size, schedule))
    if images_per_gpu is not None:
        micro, steps = micro_batches(batch // world_size, images_per_gpu)
        cfg.merge_from_list([ACCUMULATION_KEY, steps])
    else:
        steps = cfg.SOLVER.ACCUMULATION_STEPS
        if steps < 1 or (batch // world_size) % steps:
            raise ValueError(f"{ACCUMULATION_KEY} {steps} does not split the {batch // world_size} images per "
                             "process into equal micro-batches; use --images-per-gpu instead")
        micro = batch // world_size // steps
    if steps > 1 and cfg.SOLVER.AMP.ENABLED:
        raise ValueError("gradient accumulation (--images-per-gpu) runs in fp32: drop SOLVER.AMP.ENABLED, "
                         "or give each GPU its whole share of the batch")
    if cfg.SOLVER.REFERENCE_WORLD_SIZE and (rule is not None or steps > 1):
        # Detectron2's DefaultTrainer would scale the batch and schedule a second time.
        raise ValueError("SOLVER.REFERENCE_WORLD_SIZE turns on Detectron2's own auto-scaling; with it, pass "
                         "--no-rescale (or --schedule protocol) and no --images-per-gpu, so the schedule is not "
                         "scaled twice")

    notes = []
    sync_bn_keys = sorted(key for key, value in _flatten(cfg).items()
                          if key.endswith(".NORM") and value == "SyncBN")
    if world_size == 1 and sync_bn_keys:
        # On one process SyncBN has nothing to sync with (Detectron2 raises "Default process group
        # has not been initialized"); plain BN over the same images computes the same statistics.
        for key in sync_bn_keys:
            cfg.merge_from_list([key, "BN"])
        notes.append(f"one process: plain BN instead of SyncBN for {', '.join(sync_bn_keys)} "
                     "(the same statistics over the same images)")

    final = _flatten(cfg)
    deviations = []
    explained = {ACCUMULATION_KEY, *sync_bn_keys}
    if rule is not None:
        run_schedule = Schedule.from_solver(cfg.SOLVER)
        deviations.append(describe(protocol_schedule, rule, world_size, run_schedule))
        explained.update(kept_by_run(protocol_schedule, rule, run_schedule))
    split_deviations, split_notes = _batch_split(cfg, protocol["SOLVER.IMS_PER_BATCH"], world_size, micro, steps,
                                                 sync_bn_keys)
    deviations.extend(split_deviations)
    notes.extend([*split_notes, *_per_gpu_notes(cfg, micro, steps)])
    for key, value in final.items():
        if key in BOOKKEEPING_KEYS or key in explained or value == protocol.get(key, value):
            continue
        deviations.append(f"{key}: {value!r} (protocol: {protocol.get(key)!r})")

    cfg.freeze()
    return ResolvedConfig(cfg, tuple(d for d in deviations if d), tuple(notes), world_size)  # no empty sentence


def _batch_split(cfg, protocol_batch, world_size, micro, steps, sync_bn_keys):
    """(deviations, notes) on how the batch meets the GPUs: gradient accumulation, and BN statistics over
    another number of images than the protocol's. ``sync_bn_keys``: the norms the config has as SyncBN (plain
    BN on one process); any other norm is a key deviation already, and its statistics need no sentence."""
    seen = micro * world_size  # SyncBN across every process, or plain BN on the only one
    other_bn = bool(sync_bn_keys) and seen != protocol_batch
    if steps > 1:
        accumulation = (f"gradient accumulation over {steps} micro-batches of {micro} image(s) per GPU "
                        f"(batch {cfg.SOLVER.IMS_PER_BATCH}, its LR and schedule kept)")
        if other_bn:
            return [f"{accumulation}: BN (and PreciseBN) batch statistics over {seen} images at a time instead "
                    f"of the protocol's {protocol_batch}"], []
        return [], [accumulation]
    if other_bn:
        how = (f"plain BN on one process ({', '.join(sync_bn_keys)})" if world_size == 1
               else f"SyncBN across {world_size} processes x {micro} images")
        return [f"{how}: batch statistics over {seen} images instead of SyncBN over the protocol's "
                f"{protocol_batch}"], []
    return [], []


def _per_gpu_notes(cfg, micro, steps):
    """What changes with the images per forward pass on a GPU when the protocol holds (its 2 per GPU)."""
    if micro == IMAGES_PER_GPU:
        return []
    notes = [f"{micro} image(s) per GPU per forward pass (protocol: {IMAGES_PER_GPU} on each of {PROTOCOL_GPUS} "
             "GPUs): each GPU pads its images to the largest of them, so the zero padding that the backbone and "
             "its BN statistics see differs"]
    if cfg.MODEL.MASK_ON:
        over = "GPUs and micro-batches" if steps > 1 else "GPUs"
        notes.append(f"the mask loss is a mean over the foreground ROIs of each forward pass's {micro} image(s), "
                     f"averaged over {over} (protocol: {IMAGES_PER_GPU} images per GPU): the same ROIs, weighted "
                     "slightly differently")
    return notes


def processes(num_gpus, num_machines, cuda=None):
    """(world size, on CPU) of a run asking for ``num_gpus`` per machine on ``num_machines``.

    ``cuda``: whether the machine that runs it has CUDA (None: this one, as torch sees it). Without CUDA a
    run is one process on CPU and more are refused; a dry run plans for GPUs from any machine (``cuda=True``).
    """
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if num_gpus == 0 and num_machines > 1:
        raise UserError(f"--num-gpus 0 --num-machines {num_machines}: a CPU run is one process on one machine")
    if num_gpus == 0 or not cuda:
        if num_gpus > 1 or num_machines > 1:
            raise UserError(f"--num-gpus {num_gpus} --num-machines {num_machines} asked for, but CUDA is not "
                            "available; on CPU use --num-gpus 0 (or 1): one process")
        return 1, True
    return num_gpus * num_machines, False


def add_schedule_arguments(parser):
    """The options that choose how the protocol's batch and schedule meet the GPUs (both commands have them)."""
    parser.add_argument(
        "--schedule", choices=SCHEDULES,
        help="protocol (the default; linear-scaling with --smoke): the config's batch of 16, LR and schedule on "
             "any number of GPUs, 16/G images per GPU (accumulated over micro-batches when --images-per-gpu is "
             "smaller); linear-scaling: --images-per-gpu (default 2) per GPU, the LR scaled with the batch and "
             "every iteration count inversely (Goyal et al. 2017), recorded as a deviation")
    parser.add_argument(
        "--images-per-gpu", type=positive_int, metavar="N",
        help="the most images one GPU holds in a training step (default: its whole share of the batch). Fewer "
             "than its share: each GPU runs micro-batches of N and accumulates their gradients, keeping batch, "
             "LR and schedule; BN then normalises over fewer images (recorded). Rule of thumb: R50-C4 at 800 px "
             "with 512 ROIs per image holds about 4.5-5 GB of activations per image in fp32 (measured on CPU, "
             "docs/PERFORMANCE.md), so N = (GPU GB - 2) / 5: 2 on 16 GB, 4 on 24-40 GB, 8 on 48-80 GB, 16 on "
             "141 GB (N is rounded down to a divisor of 16/G)")
    parser.add_argument(
        "--no-rescale", action="store_true",
        help="the config's batch, LR and schedule as they are: the same as --schedule protocol (kept for scripts "
             "written when linear scaling was the default)")


def schedule_choice(args):
    """``schedule`` and ``images_per_gpu`` for ``resolve_config`` / ``resolve_task`` from parsed options."""
    if args.no_rescale and args.schedule == "linear-scaling":
        raise UserError("--no-rescale and --schedule linear-scaling contradict each other (--no-rescale is "
                        "--schedule protocol); give one of them")
    return {"schedule": "protocol" if args.no_rescale else args.schedule, "images_per_gpu": args.images_per_gpu}


def resolve_task(task, world_size, *, smoke=False, opts=(), schedule=None, images_per_gpu=None, cpu=False):
    """``resolve_config`` of the protocol of ``task`` (voc or coco) for a run of ``world_size`` processes.

    ``smoke``: the CPU-sized preset, whose schedule is the linear scaling rule at 2 images per process
    unless ``schedule`` says otherwise.
    """
    opts = [*(SMOKE_OPTS if smoke else ()), *opts, *(("MODEL.DEVICE", "cpu") if cpu else ())]
    schedule = schedule or ("linear-scaling" if smoke else "protocol")
    return resolve_config(CONFIGS[task], opts, world_size, schedule, images_per_gpu)


def config_dict(cfg):
    """The resolved config as plain JSON-able data (what Detectron2 writes to config.yaml)."""
    return yaml.safe_load(cfg.dump())


def flat_config(cfg):
    """The resolved config as ``{"SOLVER.BASE_LR": 0.02, ...}``: JSON-able values under dotted keys."""
    return _flatten(config_dict(cfg))
