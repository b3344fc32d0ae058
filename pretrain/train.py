"""Barlow Twins pretraining of a ResNet-50 on an ImageFolder: one process, torchrun or SLURM.

Defaults are the paper's run (``bt_transfer.core.provenance.PAPER_PRETRAINING``, the official code's values).
OUT holds one run (``run.json``, claimed before anything is written): rerunning the same command resumes from
``checkpoint.pth`` exactly, even mid-epoch, and a run ends with ``resnet50.pth`` in the official export format.
Why the gradients are divided by 32 by default: ``pretrain.barlow_twins``; the kNN monitor: ``pretrain.knn``.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from bt_transfer.core.errors import command
from bt_transfer.core.fileio import write_json
from bt_transfer.core.options import non_negative_float, non_negative_int, positive_float, positive_int
from bt_transfer.core.provenance import GRAD_SCALINGS, gradient_divisor
from bt_transfer.core.provenance import PAPER_PRETRAINING as PAPER
from bt_transfer.core.progress import MetricsLog, Progress, peak_memory_gb
from bt_transfer.core.records import code_version
from bt_transfer.datasets.facts import generated_manifest
from pretrain.augment import TwoViews, normalize_batch
from pretrain.augment_device import apply_colour
from pretrain.barlow_twins import LOSS_FORMS, BarlowTwins, parse_projector
from pretrain.checkpoint import (
    BACKBONE_FILE, CHECKPOINT_FILE, export_backbone, remove_stale_temporaries, resume, save_checkpoint,
)
from pretrain.data import ResumableSampler, TwoViewDataset, make_loader
from pretrain.distributed import cleanup, init_distributed
from pretrain.gpu_batch import check_pretraining_batch
from pretrain.knn import KnnMonitor, labelled_splits
from pretrain.lars import LARS, base_learning_rate, learning_rate, param_groups, set_learning_rate
from pretrain.run_folder import claim_for_all

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
AUGMENT_CHOICES = ("auto", "cpu", "device")
SLURM_LOGS = "slurm"  # pretrain.slurm's logs in OUT, written before the job claims OUT
# The settings that define a run (with its data and effective gradient divisor, see run_identity): every one
# that changes the trained weights. Not how they are computed (--workers, --augment, --loss-form, --amp,
# --channels-last: the same numbers, bit for bit or up to rounding), what is logged or saved when, the kNN
# monitor, or where the run stops (--max-steps): a rerun that changes only those continues the same run.
IDENTITY_KEYS = ("epochs", "batch_size", "projector", "lambd", "learning_rate_weights", "learning_rate_biases",
                 "weight_decay", "warmup_epochs", "image_size", "seed", "grad_scaling", "jpeg_draft")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="A corrupt or unreadable image stops the run with an error naming the file (no silent skip); "
               "fix or remove it and rerun the same command: training resumes from OUT/checkpoint.pth.",
    )
    parser.add_argument("--data", type=Path, required=True, help="ImageFolder root: <data>/<class>/<image>")
    parser.add_argument("--out", type=Path, required=True, help="run folder: checkpoints, metrics, resnet50.pth")
    parser.add_argument("--epochs", type=positive_int, default=PAPER["epochs"],
                        help="passes over the data (paper: 1000)")
    parser.add_argument("--batch-size", type=positive_int, default=PAPER["batch_size"],
                        help="global batch, over all processes")
    parser.add_argument("--projector", default=PAPER["projector"], help="projector layer widths")
    parser.add_argument("--lambd", type=non_negative_float, default=PAPER["lambd"],
                        help="weight of the off-diagonal terms")
    parser.add_argument("--learning-rate-weights", type=positive_float, default=PAPER["learning_rate_weights"],
                        help="multiplier of batch/256 for weights")
    parser.add_argument("--learning-rate-biases", type=non_negative_float, default=PAPER["learning_rate_biases"],
                        help="multiplier of batch/256 for biases and BN parameters")
    parser.add_argument("--weight-decay", type=non_negative_float, default=PAPER["weight_decay"],
                        help="LARS weight decay (paper's text: 1.5e-6)")
    parser.add_argument("--warmup-epochs", type=non_negative_int, default=PAPER["warmup_epochs"],
                        help="linear warmup before the cosine decay")
    parser.add_argument("--image-size", type=positive_int, default=PAPER["image_size"],
                        help="side of the square crops")
    parser.add_argument("--jpeg-draft", action="store_true", default=PAPER["jpeg_draft"],
                        help="decode JPEGs at reduced scale when both crops keep enough pixels (faster on large "
                             "images; not pixel-identical to the official pipeline, so recorded as a deviation)")
    parser.add_argument("--workers", type=non_negative_int, default=8,
                        help="data-loading processes per training process")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="model init, data order and augmentations")
    parser.add_argument("--loss-form", choices=LOSS_FORMS, default="auto",
                        help="cross_correlation (D x D) or gram (N x N); auto picks the cheaper one")
    parser.add_argument("--grad-scaling", choices=GRAD_SCALINGS, default=PAPER["grad_scaling"],
                        help="gradient of the loss: paper = exact / 32 on any number of processes (the official "
                             "code on the paper's 32 GPUs), exact, or official = exact / number of processes")
    parser.add_argument("--official-grad-scaling", dest="grad_scaling", action="store_const", const="official",
                        help="the same as --grad-scaling official (its old name)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=1000,
                        help="steps between checkpoints (also at each epoch end)")
    parser.add_argument("--log-every", type=positive_int, default=10, help="steps between metrics lines")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="mixed precision: auto = bf16 (fp16 before Ampere) on CUDA, off on CPU")
    parser.add_argument("--augment", choices=AUGMENT_CHOICES, default="auto",
                        help="where colour jitter, grayscale, blur and solarisation run: cpu = in the loader workers "
                             "(PIL), device = on the batch on the training device (same decisions, same pixels); "
                             "auto = device on CUDA, cpu otherwise")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convolutions on GPU)")
    # On ImageNet with the defaults one evaluation embeds 50k bank + 50k val images, forward only: about 1% of
    # an epoch's compute (two views, forward and backward), so every 10 epochs costs ~0.1% and gives the
    # paper's 1000 epochs a 100-point curve; the bank (50k x 2048 floats, 400 MB) is freed after each one.
    parser.add_argument("--knn-every", type=non_negative_int, default=10,
                        help="epochs between kNN evaluations on the val/ split beside --data (also at the end "
                             "of training); 0: never")
    parser.add_argument("--knn-train-per-class", type=positive_int, default=50,
                        help="training images per class the kNN monitor votes from (a class-balanced subset "
                             "fixed by --seed)")
    parser.add_argument("--max-steps", type=positive_int, default=None,
                        help="stop after this many steps in total (smoke runs)")
    return parser


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        parse_projector(args.projector)
    except ValueError as error:
        parser.error(f"--projector: {error}")
    if args.batch_size < 2:
        parser.error("--batch-size must be at least 2: the loss normalises over the batch")
    return args


def amp_dtype_for(choice, capability):
    """The autocast dtype for ``--amp`` on a CUDA device of compute ``capability`` ((major, minor); None on CPU),
    or None for full precision.

    auto: bf16 from Ampere (8.0) on, fp16 before. Earlier GPUs only emulate bf16, and their convolutions then
    run far slower; ``torch.cuda.is_bf16_supported()`` counts the emulation, while this is the rule of
    ``is_bf16_supported(including_emulation=False)``, as a function of the capability so it can be checked
    without a GPU.
    """
    if choice == "off" or (choice == "auto" and capability is None):
        return None
    if choice == "auto":
        return torch.bfloat16 if capability >= (8, 0) else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[choice]


def resolve_amp(choice, device):
    """The autocast dtype for ``--amp`` on ``device``, or None for full precision."""
    return amp_dtype_for(choice, torch.cuda.get_device_capability(device) if device.type == "cuda" else None)


def resolve_augment(choice, device):
    """Where ``--augment`` runs the colour operations on ``device``: "cpu" or "device"."""
    if choice == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return choice


def run_identity(args, images, world_size):
    """What defines this pretraining run (``bt_transfer.core.rundir``): the settings of IDENTITY_KEYS, the
    gradient divisor they give on ``world_size`` processes, and the data (its folder and ``images`` count)."""
    return {**{key: getattr(args, key) for key in IDENTITY_KEYS},
            "gradient_divisor": gradient_divisor(args.grad_scaling, world_size),
            "data": str(args.data.resolve()), "images": images}


def build_model(args, dist_info):
    model = BarlowTwins(args.projector, args.lambd, args.loss_form, args.grad_scaling)
    if dist_info.distributed and dist_info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    return model.to(dist_info.device, memory_format=memory_format)


def build_knn_monitor(args, dist_info, amp_dtype):
    """(the kNN monitor, or None, and what args.json records about it)."""
    if args.knn_every == 0:
        return None, {"skipped": "--knn-every 0"}
    splits, reason = labelled_splits(args.data, args.image_size, args.knn_train_per_class, args.seed)
    if splits is None:
        return None, {"skipped": reason}
    monitor = KnnMonitor(*splits, batch_size=args.batch_size // dist_info.world_size, workers=args.workers,
                         device=dist_info.device, amp_dtype=amp_dtype, channels_last=args.channels_last,
                         rank=dist_info.rank, world_size=dist_info.world_size)
    return monitor, monitor.settings


def to_device_views(batch, device, channels_last):
    """uint8 views from the loader -> normalised float views on ``device`` (normalising there is cheaper).

    With --augment device the batch also holds each view's colour decisions, applied here on ``device``.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    views, colours = batch[:2], batch[2:]
    views = [v.to(device, non_blocking=True) for v in views]
    if colours:
        views = [apply_colour(v, colour) for v, colour in zip(views, colours, strict=True)]
    return [normalize_batch(v).contiguous(memory_format=memory_format) for v in views]


class RunLog:
    """Rank 0's record of a run: args.json, metrics.jsonl, TensorBoard events and the progress line.

    Throughput and data time are averaged over the steps since the previous line.
    """

    def __init__(self, args, argv, dist_info, steps_per_epoch, start_step, stop_step, amp_dtype, knn_monitor):
        from torch.utils.tensorboard import SummaryWriter  # imported here: only rank 0 pays for it

        self.batch_size, self.lr_multiplier, self.device = args.batch_size, args.learning_rate_weights, dist_info.device
        args.out.mkdir(parents=True, exist_ok=True)
        resolved = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        write_json(args.out / "args.json", {
            **resolved, "argv": argv, "world_size": dist_info.world_size, "code_version": code_version(),
            "gradient_divisor": gradient_divisor(args.grad_scaling, dist_info.world_size),
            "steps_per_epoch": steps_per_epoch, "resumed_from_step": start_step,
            "amp_dtype": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
            "generated_data": str(manifest) if (manifest := generated_manifest(args.data)) else None,
            "knn_monitor": knn_monitor,
        })
        self.metrics = MetricsLog(args.out / "metrics.jsonl")
        self.writer = SummaryWriter(args.out / "tensorboard")
        self.progress = Progress(stop_step, name="pretrain", unit="img", start=start_step)
        self.stop_step = stop_step
        self.knn_top1 = None
        self.start_window()

    def start_window(self):
        self.window_start, self.window_steps, self.data_time = time.perf_counter(), 0, 0.0

    def step_done(self, data_time):
        self.window_steps += 1
        self.data_time += data_time

    def write(self, step, epoch, loss, lr):
        elapsed = time.perf_counter() - self.window_start
        record = dict(step=step, epoch=epoch, loss=loss, lr=lr * self.lr_multiplier,
                      images_per_s=self.window_steps * self.batch_size / elapsed,
                      data_time=self.data_time / max(self.window_steps, 1), max_memory_gb=peak_memory_gb(self.device))
        self.metrics.write(**record)
        for key in ("loss", "lr", "images_per_s", "data_time"):
            self.writer.add_scalar(key, record[key], step)
        knn = "" if self.knn_top1 is None else f" knn top-1 {self.knn_top1:.2f}"
        self.progress.update(step, self.batch_size, force=step == self.stop_step, memory_gb=record["max_memory_gb"],
                             extra=f"epoch {epoch} loss {loss:.4g} lr {record['lr']:.3g}{knn}")
        self.start_window()

    def write_knn(self, step, epoch, record):
        """One kNN evaluation, which always follows a ``write`` of the same step."""
        self.knn_top1 = record["knn_top1"]
        self.metrics.write(step=step, epoch=epoch, **record)
        self.writer.add_scalar("knn_top1", self.knn_top1, step)
        self.progress.update(step, self.batch_size, force=True, memory_gb=peak_memory_gb(self.device),
                             extra=f"epoch {epoch} knn top-1 {self.knn_top1:.2f} ({record['knn_k']}-NN, "
                                   f"{record['knn_train_images']} train / {record['knn_val_images']} val images, "
                                   f"{record['knn_seconds']:.1f}s)")
        self.start_window()  # the evaluation's time is not training throughput

    def close(self):
        self.metrics.close()
        self.writer.close()


def check_same_step_everywhere(step, dist_info):
    """Every process must resume from the same checkpoint: OUT has to be on storage they all see."""
    if not dist_info.distributed:
        return
    steps = torch.tensor([step, -step], device=dist_info.device)
    torch.distributed.all_reduce(steps, op=torch.distributed.ReduceOp.MAX)
    if steps[0].item() != -steps[1].item():
        raise RuntimeError(f"processes resumed from different steps (min {-steps[1].item()}, max {steps[0].item()}): "
                           "--out must be on a filesystem every process sees, so all read the same checkpoint.pth")


def train(args, dist_info, argv=()):
    """Train (or resume) to the end of the schedule or --max-steps; return the number of steps done."""
    device = dist_info.device
    amp_dtype = resolve_amp(args.amp, device)
    # Before anything is read, built or written: a batch that cannot split or fit fails at once, saying what to set.
    check_pretraining_batch(args.batch_size, dist_info.world_size, args.image_size, args.projector, amp_dtype, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    args.augment = resolve_augment(args.augment, device)  # args.json records the resolved choice
    transform = TwoViews(args.image_size, normalize=False, colour_on_device=args.augment == "device",
                         jpeg_draft=args.jpeg_draft)
    dataset = TwoViewDataset(args.data, transform, seed=args.seed)
    sampler = ResumableSampler(len(dataset), args.batch_size, dist_info.rank, dist_info.world_size, args.seed)
    loader = make_loader(dataset, sampler, args.workers, pin_memory=device.type == "cuda")
    steps_per_epoch = sampler.steps_per_epoch
    total_steps = args.epochs * steps_per_epoch
    warmup_steps = args.warmup_epochs * steps_per_epoch
    stop_step = min(total_steps, args.max_steps or total_steps)

    model = build_model(args, dist_info)
    optimizer = LARS(param_groups(model, args.weight_decay))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    checkpoint_path = args.out / CHECKPOINT_FILE
    schedule = dict(steps_per_epoch=steps_per_epoch, global_batch=args.batch_size, projector=args.projector)
    # Before anything is written into OUT; the lock is held until the run ends.
    with claim_for_all(args.out, "pretrain", run_identity(args, len(dataset), dist_info.world_size), dist_info,
                       may_exist=(SLURM_LOGS,)):
        step = 0
        if dist_info.is_main:
            remove_stale_temporaries(args.out)
        if checkpoint_path.exists():
            step = resume(checkpoint_path, model=model, optimizer=optimizer, scaler=scaler, **schedule)
        check_same_step_everywhere(step, dist_info)
        ddp_model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
            if dist_info.distributed else model
        base_lr = base_learning_rate(args.batch_size)
        multipliers = (args.learning_rate_weights, args.learning_rate_biases)
        knn_monitor, knn_record = build_knn_monitor(args, dist_info, amp_dtype)
        log = None
        if dist_info.is_main:
            log = RunLog(args, list(argv), dist_info, steps_per_epoch, step, stop_step, amp_dtype, knn_record)
        if log:
            print(f"pretrain: {len(dataset)} images, {steps_per_epoch} steps/epoch, steps {step}->{stop_step}, "
                  f"world size {dist_info.world_size}, amp {amp_dtype or 'off'}, device {device}",
                  file=sys.stderr, flush=True)
            if knn_monitor is None and args.knn_every:
                print(f"pretrain: no kNN monitor: {knn_record['skipped']}", file=sys.stderr, flush=True)

        model.train()
        while step < stop_step:
            epoch = step // steps_per_epoch
            sampler.set_position(epoch, step % steps_per_epoch)
            fetch_start = time.perf_counter()
            for batch in loader:
                y1, y2 = to_device_views(batch, device, args.channels_last)
                data_time = time.perf_counter() - fetch_start
                lr = learning_rate(step, total_steps, warmup_steps, base_lr)
                set_learning_rate(optimizer, lr, multipliers)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                    loss = ddp_model(y1, y2)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                end_of_epoch = step % steps_per_epoch == 0
                if log:
                    log.step_done(data_time)
                    if step % args.log_every == 0 or end_of_epoch or step == stop_step:
                        log.write(step, epoch, loss.item(), lr)  # .item() syncs: only on logged steps
                # Every process takes part (the work is sharded), before the checkpoint of the same step:
                # a run killed during the evaluation resumes before it and evaluates again.
                if knn_monitor and (step == stop_step or end_of_epoch and (epoch + 1) % args.knn_every == 0):
                    knn = knn_monitor.evaluate(model.backbone)
                    if log:
                        log.write_knn(step, epoch, knn)
                if log and (step % args.checkpoint_every == 0 or end_of_epoch or step == stop_step):
                    save_checkpoint(checkpoint_path, step=step, model=model, optimizer=optimizer, scaler=scaler,
                                    **schedule)
                if step == stop_step:
                    break
                fetch_start = time.perf_counter()

        if log:
            export_backbone(model, args.out / BACKBONE_FILE)
            log.close()
            print(f"pretrain: wrote {args.out / BACKBONE_FILE} after {step} steps", file=sys.stderr, flush=True)
        return step


@command
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dist_info = init_distributed()
    try:
        train(args, dist_info, argv)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
