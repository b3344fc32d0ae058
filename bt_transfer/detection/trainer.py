"""Detectron2 training and evaluation of the C4 transfer protocol, after Detectron2's ``tools/train_net.py``
(setup / main / Trainer): ``python -m bt_transfer.train_net`` with its usual flags (``--config-file``,
``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``, ``--resume``, ``--eval-only``,
trailing ``KEY VALUE`` overrides).

A config file is resolved for the run's world size (``bt_transfer.detection.protocol``; ``--schedule``
and ``--images-per-gpu`` as for ``bt_transfer.transfer``) and its departures from the protocol are logged;
``--resolved`` takes a config that ``bt_transfer.transfer`` has already resolved as it is. With
``SOLVER.ACCUMULATION_STEPS`` k > 1 each step accumulates k micro-batches (``detection.accumulation``). On
CPU (``--num-gpus 0`` or no CUDA) the run stays in this process: Detectron2's ``launch`` hard-codes NCCL.

Every model file is read by ``SafeCheckpointer`` (no code runs from a file). Checkpoints also hold the
optimizer state and each process's random states and data-stream positions (``resume``): ``--resume``
continues the same run, bit-identically on CPU with 0 data-loading workers.
"""
import logging
import os
import weakref

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, HookBase, default_argument_parser, default_setup, hooks, launch
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter
from detectron2.utils.logger import setup_logger

import bt_transfer.detection.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from bt_transfer.core.errors import UserError, command
from bt_transfer.core.progress import Progress, peak_memory_gb
from bt_transfer.datasets.layout import use_datasets_root
from bt_transfer.detection.accumulation import micro_batch_config, use_accumulation
from bt_transfer.detection.checkpoint import CheckpointError, SafeCheckpointer
from bt_transfer.detection.mapper import NamingDatasetMapper, data_error_first
from bt_transfer.detection.protocol import (
    add_schedule_arguments, new_config, processes, resolve_config, schedule_choice,
)
from bt_transfer.detection.resume import preserved_rng, restore_rng, resumable_train_loader, rng_state
from bt_transfer.detection.solver import check_solver
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


def on_gpu(cfg):
    return torch.device(cfg.MODEL.DEVICE).type == "cuda"


def metrics_period(max_iter):
    """Iterations between ``metrics.json`` lines: Detectron2's 20, and down to every iteration in runs shorter than
    2,000, so that a short run's curves have enough points to show its losses falling."""
    return max(1, min(20, max_iter // 100))


class ProgressHook(HookBase):
    """A throughput / ETA / memory line every few seconds; memory also goes to ``metrics.json``."""

    def __init__(self, images_per_step, device, every=10.0):
        # The memory of the device the model runs on: a CPU run on a GPU machine reports its resident memory.
        self.images_per_step, self.device, self.every = images_per_step, device, every

    def before_train(self):
        self.progress = Progress(self.trainer.max_iter, "train", "img", every=self.every, start=self.trainer.start_iter)

    def after_step(self):
        memory_gb = peak_memory_gb(self.device)
        storage = self.trainer.storage
        storage.put_scalar("memory_gb", memory_gb, smoothing_hint=False)
        step = self.trainer.iter + 1
        loss = f"loss {storage.history('total_loss').latest():.3f}" if "total_loss" in storage.histories() else ""
        self.progress.update(step, self.images_per_step, loss, memory_gb, force=step == self.trainer.max_iter)


class RunStateCheckpointer(hooks.PeriodicCheckpointer):
    """Detectron2's periodic checkpointer, on every process: before each save (fvcore's rule: every ``period``
    iterations and after the last) the processes' run states are gathered into the trainer, which saves them."""

    def after_step(self):
        iteration = self.trainer.iter
        if (iteration + 1) % self.period == 0 or iteration >= self.max_iter - 1:
            self.trainer.gather_run_states()
        super().after_step()  # saves on the main process only


# What a checkpoint of this trainer holds besides the model, all needed to continue the same run: the iteration
# and LR schedule (Detectron2's), the optimizer (and AMP's loss scale) as Detectron2 >= 0.7 saves them, and each
# process's random states and data positions.
RUN_STATE_KEYS = ("iteration", "_trainer", "processes")


class Trainer(DefaultTrainer):
    """Detectron2's DefaultTrainer whose model loads are safe, whose checkpoints continue the same run and whose
    steps may accumulate micro-batches."""

    def __init__(self, cfg):
        super().__init__(cfg)
        use_accumulation(self)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name):
        return build_evaluator(cfg, dataset_name)

    # Every loader (training, PreciseBN, evaluation) names an image it cannot read.
    @classmethod
    def build_train_loader(cls, cfg):
        # One micro-batch at a time: the data positions a checkpoint saves count its samples.
        return resumable_train_loader(micro_batch_config(cfg), mapper=NamingDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=NamingDatasetMapper(cfg, is_train=False))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        with preserved_rng(cuda=on_gpu(cfg)):
            return super().test(cfg, model, evaluators)

    def build_hooks(self):
        # DefaultTrainer made its plain DetectionCheckpointer just before this call: replace it before a hook
        # holds it.
        self.checkpointer = SafeCheckpointer(self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        replaced = (hooks.PeriodicCheckpointer, hooks.PeriodicWriter)
        default = super().build_hooks()
        built = [h for h in default if not isinstance(h, replaced)]
        # Detectron2's writers (0.6 keeps them in ``_writers``), reused: building them again would open a second
        # TensorBoard events file.
        writers = [w for h in default if isinstance(h, hooks.PeriodicWriter) for w in h._writers]
        self.streams = {"train": self.data_loader}  # what resumes where it stopped
        for hook in built:
            if isinstance(hook, hooks.PreciseBN):
                self.streams["precise_bn"] = hook._data_loader  # its own training loader (Detectron2 0.6)
        # Where Detectron2 has its checkpointer: after PreciseBN (whose statistics it saves), before evaluation.
        at = next(i for i, h in enumerate(built) if isinstance(h, hooks.EvalHook))
        built.insert(at, RunStateCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        if comm.is_main_process():
            # Before the writers, so memory_gb reaches metrics.json with the step's losses; the writers last, so
            # evaluation results are written too. The log keeps Detectron2's line every 20 iterations; the files
            # behind the curves get a point every metrics_period iterations.
            built.append(ProgressHook(self.cfg.SOLVER.IMS_PER_BATCH, torch.device(self.cfg.MODEL.DEVICE)))
            printers, files = [], []
            for writer in writers:
                (printers if isinstance(writer, CommonMetricPrinter) else files).append(writer)
            built += [hooks.PeriodicWriter(printers, period=20),
                      hooks.PeriodicWriter(files, period=metrics_period(self.max_iter))]
        return built

    def gather_run_states(self):
        """Collect every process's random states and data positions on the main process (a collective)."""
        mine = {"rng": rng_state(cuda=on_gpu(self.cfg)),
                "samples": {name: stream.samples for name, stream in self.streams.items()}}
        self._run_states = comm.gather(mine)

    def state_dict(self):
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        state["processes"] = self._run_states
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self._trainer.load_state_dict(state["_trainer"])
        mine = state["processes"][comm.get_rank()]
        for name, samples in mine["samples"].items():
            if samples:  # a stream not started yet starts where an uninterrupted run would start it
                self.streams[name].resume_at(samples)
        restore_rng(mine["rng"])  # last: starting the streams above draws from it

    def resume_or_load(self, resume=True):
        if resume and self.checkpointer.has_checkpoint():
            path = self.checkpointer.get_checkpoint_file()
            rest = self.checkpointer.load(path, checkpointables=[])  # the model; the trainer's state below
            state = rest.get("trainer", {})
            if any(key not in state for key in RUN_STATE_KEYS):
                raise CheckpointError(f"{path}: holds no optimizer state, data positions or random states (written by "
                                      "Detectron2's own trainer?): a resume would not continue the same run; delete "
                                      "the folder to train again")
            if len(state["processes"]) != comm.get_world_size():
                raise CheckpointError(f"{path}: written by a run of {len(state['processes'])} process(es), this one "
                                      f"has {comm.get_world_size()}: resume with the same --num-gpus and machines")
            self.load_state_dict(state)
            self.start_iter = self.iter + 1
            return
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
    if not args.eval_only:
        check_solver(cfg)  # before default_setup writes into OUTPUT_DIR
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
        SafeCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    with data_error_first():  # not the error of a hook that ran after it
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
