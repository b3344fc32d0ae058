"""The detection protocol as data, resolved once: the paper's configs, the CPU-sized preset, and the config a run
of a given world size trains with, with every departure from the protocol in words.

The protocol is the config file itself (``detection_configs/``, Appendix C.2 of the paper, after MoCo's C4
set-up). Resolution order: the file, then the linear scaling rule (unless ``rescale`` is False), then the
overrides (final values: ``SOLVER.MAX_ITER 4`` means 4 iterations), then plain BN instead of SyncBN on one
process. ``python -m bt_transfer.transfer`` resolves a run here and hands the child the resolved config.
"""
from dataclasses import dataclass
from pathlib import Path

import yaml
from detectron2.config import get_cfg

from bt_transfer.core.errors import UserError
from bt_transfer.detection.scaling import Schedule, describe, linear_scaling

CONFIG_DIR = Path(__file__).resolve().parents[2] / "detection_configs"
CONFIGS = {"voc": CONFIG_DIR / "voc_R_50_C4_24k.yaml", "coco": CONFIG_DIR / "coco_R_50_C4_1x.yaml"}

# CPU-sized runs for tests and the demo: small images, a small ROI batch, few proposals, four steps.
SMOKE_OPTS = (
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TRAIN", "160",
    "INPUT.MAX_SIZE_TEST", "160", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    # On CPU, inference time goes into res5 and the mask head, run on every proposal and detection.
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "20", "TEST.DETECTIONS_PER_IMAGE", "20",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.STEPS", "()",  # no LR drop in so few steps
    "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2", "TEST.PRECISE_BN.NUM_ITER", "2", "DATALOADER.NUM_WORKERS", "0",
)

# Keys that say where and how fast a run goes, not what it computes: never protocol deviations.
BOOKKEEPING_KEYS = {
    "OUTPUT_DIR", "SEED", "MODEL.WEIGHTS", "MODEL.DEVICE", "DATALOADER.NUM_WORKERS",
    "SOLVER.CHECKPOINT_PERIOD", "TEST.EVAL_PERIOD", "CUDNN_BENCHMARK", "VIS_PERIOD",
}
SCHEDULE_KEYS = ("SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR", "SOLVER.MAX_ITER", "SOLVER.STEPS", "SOLVER.WARMUP_ITERS")


@dataclass(frozen=True)
class ResolvedConfig:
    cfg: object  # a frozen detectron2 CfgNode
    deviations: tuple  # every departure from the protocol config, in words
    notes: tuple  # changes that are not departures (logged only)
    world_size: int


def _flatten(node, prefix=""):
    flat = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_config(config_file, opts=(), world_size=1, rescale=True):
    """The config a run of ``world_size`` processes trains with, and how it departs from the protocol.

    Order: the protocol file, then the scaling rule (unless ``rescale`` is False), then ``opts``
    (final values: ``SOLVER.MAX_ITER 4`` means 4 iterations), then the one-process BN fallback.
    The protocol is the config file itself: any key that ends up different, beyond bookkeeping
    and what the scaling rule explains, is listed.
    """
    cfg = get_cfg()
    cfg.merge_from_file(str(config_file))
    protocol = _flatten(cfg)
    deviations, notes = [], []

    scaled = {}
    if rescale:
        protocol_schedule = Schedule.from_solver(cfg.SOLVER)
        schedule = linear_scaling(protocol_schedule, world_size)
        if schedule != protocol_schedule:
            cfg.merge_from_list(schedule.to_opts())
            scaled = {key: _flatten(cfg)[key] for key in SCHEDULE_KEYS}
            deviations.append(describe(protocol_schedule, schedule, world_size))

    cfg.merge_from_list(list(opts))
    if rescale and cfg.SOLVER.REFERENCE_WORLD_SIZE:
        # Detectron2's DefaultTrainer would scale a second time on top of the rule above.
        raise ValueError("SOLVER.REFERENCE_WORLD_SIZE turns on Detectron2's own auto-scaling; with it, pass "
                         "--no-rescale so the schedule is not scaled twice")

    sync_bn_keys = sorted(key for key, value in _flatten(cfg).items()
                          if key.endswith(".NORM") and value == "SyncBN")
    if world_size == 1 and sync_bn_keys:
        # On one process SyncBN has nothing to sync with (Detectron2 raises "Default process group
        # has not been initialized"); plain BN over the same images computes the same statistics.
        for key in sync_bn_keys:
            cfg.merge_from_list([key, "BN"])
        notes.append(f"one process: plain BN instead of SyncBN for {', '.join(sync_bn_keys)}")
        if cfg.SOLVER.IMS_PER_BATCH != protocol["SOLVER.IMS_PER_BATCH"]:
            deviations.append(
                f"plain BN on one process ({', '.join(sync_bn_keys)}): batch statistics over "
                f"{cfg.SOLVER.IMS_PER_BATCH} images instead of SyncBN over the protocol's "
                f"{protocol['SOLVER.IMS_PER_BATCH']}"
            )

    for key, value in _flatten(cfg).items():
        if key in BOOKKEEPING_KEYS or key in sync_bn_keys or value == protocol.get(key, value):
            continue
        if key in scaled and value == scaled[key]:
            continue
        deviations.append(f"{key}: {value!r} (protocol: {protocol.get(key)!r})")

    cfg.freeze()
    return ResolvedConfig(cfg, tuple(deviations), tuple(notes), world_size)


def processes(num_gpus, num_machines):
    """(world size, on CPU) of a run asking for ``num_gpus`` per machine on ``num_machines``: one process on CPU."""
    import torch

    if num_gpus == 0 or not torch.cuda.is_available():
        if num_gpus > 1 or num_machines > 1:
            raise UserError(f"--num-gpus {num_gpus} --num-machines {num_machines} asked for, but CUDA is not "
                            "available; on CPU use --num-gpus 0 (or 1): one process")
        return 1, True
    return num_gpus * num_machines, False


def resolve_task(task, world_size, *, smoke=False, opts=(), rescale=True, cpu=False):
    """``resolve_config`` of the protocol of ``task`` (voc or coco) for a run of ``world_size`` processes."""
    opts = [*(SMOKE_OPTS if smoke else ()), *opts, *(("MODEL.DEVICE", "cpu") if cpu else ())]
    return resolve_config(CONFIGS[task], opts, world_size, rescale)


def config_dict(cfg):
    """The resolved config as plain JSON-able data (what Detectron2 writes to config.yaml)."""
    return yaml.safe_load(cfg.dump())


def flat_config(cfg):
    """The resolved config as ``{"SOLVER.BASE_LR": 0.02, ...}``: JSON-able values under dotted keys."""
    return _flatten(config_dict(cfg))
