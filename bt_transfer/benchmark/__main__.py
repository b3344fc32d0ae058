"""``python -m bt_transfer.benchmark``: benchmark one ResNet-50 checkpoint on every task of the paper's Tables 1, 2
and 4, then write the report.

    python -m bt_transfer.benchmark --weights resnet50.pth --label "BT (ours)" --data /data/imagenet --gpus 8
    python -m bt_transfer.benchmark ... --plan                  # the stages, their commands and GPU-hours
    python -m bt_transfer.benchmark ... --slurm --partition learnfair --timeout-min 4320
    python -m bt_transfer.benchmark status runs/benchmark/BT-ours

Each stage is the suite's own command (pretrain.evaluate, bt_transfer.transfer, bt_transfer.report) in its own
folder under OUT, so rerunning the same command skips finished stages and resumes interrupted ones.
"""
import argparse
import shlex
import sys
from pathlib import Path

from bt_transfer.benchmark import cluster, local
from bt_transfer.benchmark.stages import TASKS, build_stages, save_plan, slug
from bt_transfer.core.errors import UserError, command


def _key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bt_transfer.benchmark", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True,
                        help="ResNet-50 checkpoint in any layout bt_transfer.convert reads")
    parser.add_argument("--label", required=True, help="how the report names this checkpoint's rows")
    parser.add_argument("--format", default="auto", dest="fmt", help="checkpoint layout (default: auto)")
    parser.add_argument("--out", type=Path, help="benchmark folder (default: runs/benchmark/<label>)")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS), help="which tasks (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="detection seeds")
    parser.add_argument("--coco-seeds", type=int, nargs="+", help="COCO seeds (default: --seeds)")
    parser.add_argument("--gpus", "--gpus-per-node", type=int, default=1, dest="gpus",
                        help="GPUs of one machine each stage uses (0: CPU); on SLURM, GPUs per job")
    parser.add_argument("--data", type=Path, default=Path("datasets/imagenet"),
                        help="ImageNet root with train/ and val/ (default: datasets/imagenet)")
    parser.add_argument("--datasets-root", type=Path, help="detection datasets root (default: $DETECTRON2_DATASETS)")
    parser.add_argument("--subset-file-1", type=Path, help="SimCLR's 1percent.txt for semisup-1")
    parser.add_argument("--subset-file-10", type=Path, help="SimCLR's 10percent.txt for semisup-10")
    parser.add_argument("--stage-args", type=_key_value, action="append", default=[], metavar="TASK=ARGS",
                        help="extra arguments for one task's command, e.g. voc='--images-per-gpu 1' (repeatable)")
    parser.add_argument("--plan", action="store_true", help="print the stages, commands and GPU-hours; run nothing")
    slurm = parser.add_argument_group("SLURM (through submitit; one job per stage and per detection seed)")
    slurm.add_argument("--slurm", action="store_true", help="submit the stages instead of running them here")
    slurm.add_argument("--executor", choices=("slurm", "local"), default="slurm",
                       help="submitit executor: slurm, or local (jobs as processes on this machine)")
    slurm.add_argument("--partition", help="SLURM partition")
    slurm.add_argument("--account", help="SLURM account")
    slurm.add_argument("--qos", help="SLURM quality of service")
    slurm.add_argument("--timeout-min", type=int, default=72 * 60, help="time limit of one job; requeued after it")
    slurm.add_argument("--max-requeues", type=int, default=20, help="requeues on timeout (preemptions do not count)")
    slurm.add_argument("--cpus-per-gpu", type=int, default=10, help="CPU cores per GPU (data-loading workers)")
    slurm.add_argument("--mem-gb", type=int, help="memory per job in GB (default: the partition's)")
    slurm.add_argument("--slurm-param", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch parameter, e.g. constraint=volta32gb (repeatable)")
    return parser


def resolve(args):
    """The benchmark's options as plain values, checked before anything runs."""
    unknown = [task for task, _ in args.stage_args if task not in TASKS]
    if unknown:
        raise UserError(f"--stage-args {unknown[0]}=...: unknown task; expected one of {', '.join(TASKS)}")
    for name in ("gpus", "timeout_min", "cpus_per_gpu", "max_requeues", "mem_gb"):
        if (getattr(args, name) or 0) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not args.weights.is_file():
        raise UserError(f"--weights {args.weights}: no such file")
    stage_args = {}
    for task, text in args.stage_args:
        stage_args.setdefault(task, []).extend(shlex.split(text))
    return dict(weights=args.weights, label=args.label, fmt=args.fmt,
                out=args.out or Path("runs/benchmark") / slug(args.label), tasks=list(dict.fromkeys(args.tasks)),
                seeds=args.seeds, coco_seeds=args.coco_seeds or args.seeds, gpus=args.gpus, data=args.data,
                datasets_root=args.datasets_root, subset_files={1: args.subset_file_1, 10: args.subset_file_10},
                stage_args=stage_args, executor=None if args.executor == "slurm" else "local",
                partition=args.partition, account=args.account, qos=args.qos, timeout_min=args.timeout_min,
                max_requeues=args.max_requeues, cpus_per_gpu=args.cpus_per_gpu, mem_gb=args.mem_gb,
                slurm_params=dict(args.slurm_param))


def check_weights(options):
    """Read the checkpoint once up front (strictly, without running code): a wrong file fails in seconds."""
    from bt_transfer.convert.formats import read_resnet50

    fmt, _, _ = read_resnet50(options["weights"], options["fmt"])
    return fmt


def plan_text(stages):
    total = sum(s.gpu_hours for s in stages)
    lines = [f"{'stage':<16} {'GPUs':>4} {'GPU-h':>7}  estimate from"]
    lines += [f"{s.name:<16} {s.gpus:>4} {s.gpu_hours:>7.1f}  {s.estimate or '-'}" for s in stages]
    lines += [f"{'total':<16} {'':>4} {total:>7.1f}  (V100-class; data loading not included)", "", "commands:"]
    lines += [f"  {s.name}: {s.shell()}" for s in stages]
    return "\n".join(lines)


@command
def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["status"]:
        if len(argv) != 2:
            raise UserError("usage: python -m bt_transfer.benchmark status OUT")
        if not (Path(argv[1]) / cluster.PLAN_FILE).is_file():
            raise UserError(f"{argv[1]}: no {cluster.PLAN_FILE}; is it a benchmark folder?")
        print(cluster.status(argv[1]))
        return 0
    args = build_parser().parse_args(argv)
    options = resolve(args)
    stages = build_stages(options, per_seed=args.slurm)
    if args.plan:
        print(plan_text(stages))
        return 0
    fmt = check_weights(options)
    print(f"benchmark of {options['weights']} ({fmt}) as {options['label']!r} in {options['out']}", flush=True)
    out = Path(options["out"])
    if args.slurm:
        jobs = cluster.submit(stages, out, options)
        print(f"submitted {len(jobs)} jobs ({', '.join(f'{k} {v}' for k, v in jobs.items())}); "
              f"python -m bt_transfer.benchmark status {out}")
        return 0
    save_plan(out / cluster.PLAN_FILE, stages)
    outcomes = local.run_all(stages, out)
    print("\n" + local.summary(outcomes))
    failed = [o.stage for o in outcomes if o.state == "failed"]
    if failed:
        raise UserError(f"{len(failed)} stage(s) failed: {', '.join(failed)}; fix and rerun the same command "
                        "(finished stages are skipped)")
    return 0


if __name__ == "__main__":
    main()
