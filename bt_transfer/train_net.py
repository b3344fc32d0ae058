"""Detectron2 training and evaluation of the C4 transfer protocol: ``python -m bt_transfer.train_net``.

Detectron2's ``tools/train_net.py`` conventions (``--config-file``, ``--num-gpus``,
``--num-machines``, ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``, trailing
``KEY VALUE`` overrides) with what the protocol needs on top:

- the linear scaling rule on fewer than 8 GPUs (``bt_transfer.scaling``; ``--no-rescale`` opts out);
- plain BN instead of SyncBN on one process, where SyncBN has no process group to sync over;
- the evaluator chosen by the test set's ``evaluator_type`` metadata;
- a strict load of the converted backbone, so a wrong conversion fails before the first step;
- every departure from the paper's protocol written to the log in words (``resolve_config``),
  the same list ``bt_transfer.transfer`` puts into ``result.json``.

On CPU (``--num-gpus 0`` or no CUDA) it runs in this process: Detectron2's ``launch``
hard-codes NCCL.
"""
import logging
import os
from dataclasses import dataclass

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import bt_transfer.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from bt_transfer.d2_weights import load_backbone_weights
from bt_transfer.datasets.layout import use_datasets_root
from bt_transfer.core.progress import Progress, peak_memory_gb
from bt_transfer.scaling import Schedule, describe, linear_scaling

logger = logging.getLogger("bt_transfer.train_net")

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


def build_evaluator(cfg, dataset_name):
    """The evaluator named by the dataset's ``evaluator_type`` metadata (set when it was registered)."""
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "coco":
        # pycocotools' own COCOeval: the reference implementation, and the fast one needs compiled ops.
        return COCOEvaluator(dataset_name, output_dir=os.path.join(cfg.OUTPUT_DIR, "inference"), use_fast_impl=False)
    raise ValueError(
        f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; this suite evaluates 'pascal_voc' and 'coco'"
    )


class ProgressHook(HookBase):
    """A throughput / ETA / memory line every few seconds; memory also goes to ``metrics.json``."""

    def __init__(self, images_per_step, every=10.0):
        self.images_per_step, self.every = images_per_step, every

    def before_train(self):
        self.progress = Progress(self.trainer.max_iter, "train", "img", every=self.every, start=self.trainer.start_iter)

    def after_step(self):
        memory_gb = peak_memory_gb()
        storage = self.trainer.storage
        storage.put_scalar("memory_gb", memory_gb, smoothing_hint=False)
        step = self.trainer.iter + 1
        loss = f"loss {storage.history('total_loss').latest():.3f}" if "total_loss" in storage.histories() else ""
        self.progress.update(step, self.images_per_step, loss, memory_gb, force=step == self.trainer.max_iter)


class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return build_evaluator(cfg, dataset_name)

    def build_hooks(self):
        hooks = super().build_hooks()
        if comm.is_main_process():
            # Before the writers (last), so memory_gb reaches metrics.json with the step's losses.
            hooks.insert(len(hooks) - 1, ProgressHook(self.cfg.SOLVER.IMS_PER_BATCH))
        return hooks

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            return super().resume_or_load(resume=True)
        model = self.model.module if hasattr(self.model, "module") else self.model
        from_scratch = load_backbone_weights(model, self.cfg.MODEL.WEIGHTS)
        logger.info("initialised from %s except (trained from scratch): %s",
                    self.cfg.MODEL.WEIGHTS, ", ".join(from_scratch))
        self.start_iter = 0


def argument_parser():
    parser = default_argument_parser()
    parser.add_argument(
        "--no-rescale", action="store_true",
        help="keep the config's batch, LR and schedule on fewer than 8 GPUs (default: linear scaling rule)",
    )
    return parser


def on_cpu(args):
    return args.num_gpus == 0 or not torch.cuda.is_available()


def world_size_of(args):
    """Processes the run will use: one on CPU, else GPUs per machine x machines."""
    if on_cpu(args):
        if args.num_gpus > 1 or args.num_machines > 1:
            raise SystemExit(f"--num-gpus {args.num_gpus} --num-machines {args.num_machines} asked for, but CUDA is "
                             "not available; on CPU use --num-gpus 0 (or 1): one process")
        return 1
    return args.num_gpus * args.num_machines


def resolve_args(args):
    """``resolve_config`` for parsed command-line arguments (what ``bt_transfer.transfer`` records)."""
    opts = list(args.opts) + (["MODEL.DEVICE", "cpu"] if on_cpu(args) else [])
    return resolve_config(args.config_file, opts, world_size_of(args), rescale=not args.no_rescale)


def setup(args):
    resolved = resolve_args(args)
    default_setup(resolved.cfg, args)
    setup_logger(resolved.cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="bt_transfer")
    for note in resolved.notes:
        logger.info(note)
    for deviation in resolved.deviations:
        logger.warning("protocol deviation: %s", deviation)
    return resolved.cfg


def main(args):
    """One process's work. Training leaves its evaluation in ``OUTPUT_DIR/metrics.json`` (the last
    record); ``--eval-only`` returns it."""
    use_datasets_root()  # $DETECTRON2_DATASETS, else ./datasets
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli(argv=None):
    args = argument_parser().parse_args(argv)
    world_size_of(args)  # refuse a GPU count this machine cannot run before anything starts
    if on_cpu(args):
        return main(args)
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    cli()
