"""`make demo`: the whole suite end to end on generated data, on a CPU, in minutes.

Each stage is the command a researcher runs on real data, with small-size overrides; every runner
records those overrides as deviations from the paper's protocol, so the report marks the demo's rows
as generated-data runs and never mixes them with full-protocol ones. Every runner resumes or skips
finished work, so rerunning the demo after an interruption continues where it stopped.

    python -m bt_transfer.demo --out runs/demo
"""
import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

from bt_transfer.core.children import dying_with_this_process
from bt_transfer.core.progress import format_duration

LABEL = "Barlow Twins (demo)"

# Detection long enough to learn on the generated data, short enough for the demo's budget. Measured from the
# demo's backbone on CPU: the --smoke preset's 4 iterations score AP50 0.0, and Faster R-CNN reaches VOC AP50 5-7
# after 300 images. Time goes into res5, which runs once per sampled ROI, so 4 images x 16 ROIs learn more per second
# than 2 x 32 (AP50 6.6 against 3.0 at equal cost); 2 x 8 did no better, frozen BN diverged. BN's test-time
# statistics come from 20 batches: the preset's 2 batches of 2 images are too few to estimate them.
DETECTION_LEARNS = ("--smoke --images-per-gpu 4 --opts SOLVER.WARMUP_ITERS 20 MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 16 "
                    "TEST.PRECISE_BN.NUM_ITER 20")
VOC_ITERS, COCO_ITERS = 75, 50  # 300 and 200 images: ~2.5 and ~2 minutes on 2 cores


def stages(out: Path, seeds, fast=False):
    """(name, argv) of every stage, in order. ``fast``: the same stages with a few steps each (the test suite's run)."""
    data = out / "data"
    weights = out / "pretrain" / "resnet50.pth"
    small_imagenet = "--image-size 64 --val-resize 73 --batch-size 64 --workers 0"
    pretrain_length = ["--epochs", "1", "--max-steps", "2"] if fast else ["--epochs", "4"]
    linear_epochs, semisup_epochs = ("1", "1") if fast else ("10", "5")
    voc, coco = (("--smoke --opts SOLVER.MAX_ITER 2",) * 2 if fast else
                 (f"{DETECTION_LEARNS} SOLVER.MAX_ITER {iters}" for iters in (VOC_ITERS, COCO_ITERS)))
    return [
        ("generate data", ["-m", "bt_transfer.synthetic", "--out", str(data), "--seed", "0", "--size", "128"]),
        ("pretrain", ["-m", "pretrain.train", "--data", str(data / "imagenet" / "train"), "--out", str(out / "pretrain"),
                      *pretrain_length, "--warmup-epochs", "1", "--batch-size", "32", "--projector", "512-512-512",
                      "--image-size", "64", "--workers", "0", "--log-every", "1", "--checkpoint-every", "8",
                      "--knn-every", "1"]),  # a kNN point per epoch: the pretraining curve shows learning
        ("convert", ["-m", "bt_transfer.convert", str(weights), str(out / "pretrain" / "resnet50_detectron2.pkl")]),
        # The front door: every evaluation of the paper's Tables 1, 2 and 4, then the report over the whole demo.
        ("benchmark", ["-m", "bt_transfer.benchmark", "--weights", str(weights), "--label", LABEL, "--out", str(out),
                       "--gpus", "0", "--data", str(data / "imagenet"), "--datasets-root", str(data),
                       "--seeds", *map(str, seeds), "--coco-seeds", str(seeds[0]),  # Mask R-CNN is the slowest
                       "--stage-args", f"linear=--epochs {linear_epochs} {small_imagenet}",
                       *[arg for p in (1, 10) for arg in
                         ("--stage-args", f"semisup-{p}=--epochs {semisup_epochs} {small_imagenet}")],
                       "--stage-args", f"voc={voc}", "--stage-args", f"coco={coco}"]),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default: runs/demo)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1],
                        help="VOC seeds (default: 1; each more adds about 2.5 minutes and shows the spread over seeds)")
    parser.add_argument("--fast", action="store_true", help="a few steps per stage (what the test suite runs)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    plan = stages(args.out, args.seeds, args.fast)
    for i, (name, command) in enumerate(plan, 1):
        print(f"\n== [{i}/{len(plan)}] {name}: python {shlex.join(command)}", flush=True)
        t0 = time.monotonic()
        if subprocess.run([sys.executable, *command], preexec_fn=dying_with_this_process()).returncode != 0:
            sys.exit(f"demo stopped: stage '{name}' failed (rerun `make demo` to resume after fixing it)")
        print(f"== {name} done in {format_duration(time.monotonic() - t0)}", flush=True)
    print(f"\ndemo finished in {format_duration(time.monotonic() - start)}; report: {args.out / 'tables' / 'README.md'}")


if __name__ == "__main__":
    main()
