"""Submit Barlow Twins pretraining to a SLURM cluster through submitit, requeued on preemption.

    python -m pretrain.slurm --nodes 4 --gpus-per-node 8 --partition learnlab --timeout-min 4320 \\
        --data /datasets/imagenet/train --out runs/pretrain            # any pretrain.train arguments

One SLURM task per GPU; each task reads its rank from SLURM (through submitit) and runs
``pretrain.train``. When SLURM signals a timeout or a preemption, submitit requeues the same job,
and the requeued job resumes from ``OUT/checkpoint.pth`` (written every --checkpoint-every steps and
at each epoch end), so at most those steps are recomputed. Logs go to ``OUT/slurm/``, which the job's
claim of OUT expects (see pretrain.train).
"""
import argparse
import sys
from pathlib import Path

import submitit

from bt_transfer.core.errors import UserError, command
from bt_transfer.core.options import non_negative_int, positive_int
from pretrain.train import SLURM_LOGS
from pretrain.train import parse_args as parse_train_args


class SubmitError(UserError):
    """A job that cannot be submitted from this machine; the message says why and what to do instead."""


class PretrainJob(submitit.helpers.Checkpointable):
    """What every SLURM task runs. ``Checkpointable`` makes submitit requeue it on timeout or
    preemption; no state needs passing on because training resumes from its own checkpoint file."""

    def __init__(self, train_argv):
        self.train_argv = list(train_argv)

    def __call__(self):
        # RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT for init_distributed. Every task
        # keeps all the node's GPUs visible and picks its own by LOCAL_RANK.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        from pretrain.train import main

        main(self.train_argv)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m pretrain.slurm", description=__doc__.split("\n\n")[0],
        epilog="All other arguments go to pretrain.train (see python -m pretrain.train --help).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--nodes", type=positive_int, default=1, help="machines")
    parser.add_argument("--gpus-per-node", type=positive_int, default=8,
                        help="GPUs (= training processes) per machine")
    parser.add_argument("--partition", required=True, help="SLURM partition")
    parser.add_argument("--timeout-min", type=positive_int, default=72 * 60,
                        help="time limit of one job; requeued after it")
    parser.add_argument("--cpus-per-task", type=positive_int, default=10,
                        help="CPU cores per GPU (data-loading workers + 2)")
    parser.add_argument("--mem-gb", type=positive_int, default=None,
                        help="memory per machine in GB; unset: the partition's default")
    parser.add_argument("--account", default=None, help="SLURM account")
    parser.add_argument("--constraint", default=None, help="SLURM node constraint, e.g. volta32gb")
    parser.add_argument("--max-requeues", type=non_negative_int, default=20,
                        help="requeues on timeout (preemptions do not count)")
    parser.add_argument("--job-name", default="barlow-twins")
    return parser


def parse(argv=None):
    """(SLURM options, pretrain.train argv); the training arguments are validated before anything is submitted."""
    options, train_argv = build_parser().parse_known_args(argv)
    train_args = parse_train_args(train_argv)
    return options, train_argv, train_args


def build_executor(options, folder):
    """A submitit SlurmExecutor for one task per GPU on ``options.nodes`` machines (needs no cluster to build)."""
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=options.max_requeues)
    extra = {"mem": f"{options.mem_gb}GB"} if options.mem_gb else {}
    if options.account:
        extra["account"] = options.account
    if options.constraint:
        extra["constraint"] = options.constraint
    executor.update_parameters(
        job_name=options.job_name, partition=options.partition, time=options.timeout_min, nodes=options.nodes,
        ntasks_per_node=options.gpus_per_node, gpus_per_node=options.gpus_per_node,
        cpus_per_task=options.cpus_per_task, signal_delay_s=120, **extra,
    )
    return executor


@command
def main(argv=None):
    options, train_argv, train_args = parse(argv)
    folder = Path(train_args.out) / SLURM_LOGS
    try:
        executor = build_executor(options, folder)
    except RuntimeError as error:  # submitit found no srun on this machine
        raise SubmitError(f"{error} On one machine use torchrun instead (make pretrain).") from None
    job = executor.submit(PretrainJob(train_argv))
    print(f"submitted job {job.job_id}: {options.nodes} x {options.gpus_per_node} GPUs on {options.partition}; "
          f"logs in {folder}, outputs in {train_args.out}", file=sys.stderr)
    return job


if __name__ == "__main__":
    main()
