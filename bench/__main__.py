"""``python -m bench [loss|augment|step ...]``: the suite against the official formulation, side by side.

With no benchmark named, runs all of them (about 10 minutes on 2 CPU cores). Each prints the machine, a table
and a final ``RATIOS`` line; every record also goes to ``<out>/<benchmark>.jsonl``.
"""
import argparse
import os
import sys
from pathlib import Path

# Kineto (torch.profiler) reports a missing GPU as an ERROR line at start-up; it is expected on CPU.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402

from bench import harness  # noqa: E402
from bt_transfer.core.progress import MetricsLog  # noqa: E402

BENCHMARKS = ("loss", "augment", "step")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmarks", nargs="*", metavar="{loss,augment,step}",
                        help="which benchmarks to run (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for loss and step (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for loss and step (default: torch's choice); 1 is steadier on a busy machine")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per case; the median is reported")
    parser.add_argument("--max-pass-seconds", type=float, default=30.0,
                        help="loss: skip sizes whose reference forward+backward is estimated longer than this")
    parser.add_argument("--n", type=int, nargs="+", default=None, metavar="N",
                        help="loss: batch sizes (default: 256 1024 2048)")
    parser.add_argument("--d", type=int, nargs="+", default=None, metavar="D",
                        help="loss: embedding widths (default: 2048 8192 16384)")
    parser.add_argument("--no-crossover", action="store_true", help="loss: skip the Gram/cross-correlation sweep")
    parser.add_argument("--images", type=int, default=48, help="augment: JPEG files per repetition")
    parser.add_argument("--step-batch", type=int, default=None,
                        help="step: batch size (default: 16 on CPU and on GPU; at 224 px on a GPU that needs at least "
                             "7.8 GiB, so it fits a 16 GB card; 128 needs at least 25.7 GiB)")
    parser.add_argument("--step-size", type=int, default=None, help="step: image side (default: 64 on CPU, 224 on GPU)")
    parser.add_argument("--projector", default="8192-8192-8192", help="step: projector widths (paper: 8192-8192-8192)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON-lines records")
    args = parser.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: expected some of {', '.join(BENCHMARKS)}")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    selected = args.benchmarks or list(BENCHMARKS)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = harness.machine_info(args.device)
    print("machine: " + harness.format_machine(machine), flush=True)
    for name in selected:
        with MetricsLog(args.out / f"{name}.jsonl") as log:
            log.write(bench=name, machine=machine, argv=sys.argv[1:] if argv is None else list(argv))
            if name == "loss":
                from bench import loss

                loss.run(args.device, args.reps, args.max_pass_seconds, log, sizes_n=args.n or loss.SIZES_N,
                         sizes_d=args.d or loss.SIZES_D, crossover_sweep=not args.no_crossover)
            elif name == "augment":
                from bench import augment

                augment.run(args.images, args.reps, log)
            else:
                from bench import step

                step.run(args.device, args.reps, args.step_batch, args.step_size, args.projector, log)


if __name__ == "__main__":
    main()
