"""Detectron2 training and evaluation of the C4 transfer protocol, after Detectron2's ``tools/train_net.py``
(setup / main / Trainer): ``python -m bt_transfer.train_net`` with its usual flags (``--config-file``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``,
trailing ``KEY VALUE`` overrides).

A config file is resolved for the run's world size (``bt_transfer.detection.protocol``; ``--schedule``
and ``--images-per-gpu`` as for ``bt_transfer.transfer``) and its departures from the protocol are logged;
``--resolved`` takes a config that ``bt_transfer.transfer`` has already resolved as it is. With
``SOLVER.ACCUMULATION_STEPS`` k > 1 each step accumulates k micro-batches (``detection.accumulation``). On
CPU (``--num-gpus 0`` or no CUDA) the run stays in this process: Detectron2's ``launch`` hard-codes NCCL.
"""
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

import bt_transfer.detection.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from bt_transfer.core.errors import UserError, command
from bt_transfer.core.progress import Progress, peak_memory_gb
from bt_transfer.datasets.layout import use_datasets_root
from bt_transfer.detection.accumulation import micro_batch_config, use_accumulation
from bt_transfer.detection.protocol import (
    add_schedule_arguments, new_config, processes, resolve_config, schedule_choice,
)
from bt_transfer.detection.weights import load_backbone_weights

logger = logging.getLogger("bt_transfer.train_net")


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
    def __init__(self, cfg):
        super().__init__(cfg)
        use_accumulation(self)

    @classmethod
    def build_train_loader(cls, cfg):
        return super().build_train_loader(micro_batch_config(cfg))

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
    add_schedule_arguments(parser)
    parser.add_argument(
        "--resolved", action="store_true",
        help="the config file is a run's resolved config (written by bt_transfer.transfer): take it as it is",
    )
    return parser


def on_cpu(args):
    return processes(args.num_gpus, args.num_machines)[1]


def world_size_of(args):
    """Processes the run will use: one on CPU, else GPUs per machine x machines."""
    return processes(args.num_gpus, args.num_machines)[0]


def resolve_args(args):
    """``resolve_config`` for parsed command-line arguments; a config that cannot run is a UserError."""
    opts = list(args.opts) + (["MODEL.DEVICE", "cpu"] if on_cpu(args) else [])
    try:
        return resolve_config(args.config_file, opts, world_size_of(args), **schedule_choice(args))
    except ValueError as e:  # the batch split, the scaling rule
        raise UserError(f"config {args.config_file}: {e}") from None


def setup(args):
    if args.resolved:
        cfg = new_config()
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(list(args.opts))
        cfg.freeze()
        notes, deviations = (), ()
    else:
        resolved = resolve_args(args)
        cfg, notes, deviations = resolved.cfg, resolved.notes, resolved.deviations
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="bt_transfer")
    for note in notes:
        logger.info(note)
    for deviation in deviations:
        logger.warning("protocol deviation: %s", deviation)
    return cfg


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


@command
def cli(argv=None):
    args = argument_parser().parse_args(argv)
    world_size_of(args)  # refuse a GPU count this machine cannot run before anything starts
    if not args.resolved:
        resolve_args(args)  # and a batch that does not split over the processes
    if on_cpu(args):
        return main(args)
    return launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                  dist_url=args.dist_url, args=(args,))
