"""How a process finds its place from its launcher's environment (torchrun, a SLURM step, or none), without a
process group: the mapping is a pure function of the variables and the number of visible GPUs."""
import os

import pytest
import torch

from pretrain.distributed import Launch, LaunchError, expand_hostlist, init_distributed, read_launch

CPU = torch.device("cpu")
# What an sbatch script's own shell sees in a 2-node, 16-task job: it describes the job, not a task.
SBATCH_SHELL = {"SLURM_JOB_ID": "4242", "SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_LOCALID": "0",
                "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NODEID": "0"}
# Task 9 of `srun --ntasks-per-node=8` in that job: second node, second local task.
SRUN_TASK = dict(SBATCH_SHELL, SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="16", SLURM_STEP_NODELIST="gpu[07-08]",
                 SLURM_PROCID="9", SLURM_LOCALID="1", SLURM_NODEID="1")
TORCHRUN = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "host0",
            "MASTER_PORT": "29500"}


@pytest.mark.parametrize("text, hosts", [
    ("gpu5", ["gpu5"]),
    ("node[01-03,7]", ["node01", "node02", "node03", "node7"]),
    ("node[098-101]", ["node098", "node099", "node100", "node101"]),
    ("a[1-2],login,c[9-10]", ["a1", "a2", "login", "c9", "c10"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("compute-b24-[1-3,5],compute-b25-[1,4]",
     ["compute-b24-1", "compute-b24-2", "compute-b24-3", "compute-b24-5", "compute-b25-1", "compute-b25-4"]),
])
def test_slurm_host_lists_expand(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["", "node[1-", "node[a-b]", "a,,b", "node[1-3]]", "node[3-1]"])
def test_malformed_host_lists_are_refused(text):
    with pytest.raises(LaunchError, match="node list"):
        expand_hostlist(text)


def test_no_launcher_is_one_process_on_the_first_visible_gpu():
    assert read_launch({}, visible_gpus=0) == Launch(0, 0, 1, None, CPU)
    assert read_launch({}, visible_gpus=2) == Launch(0, 0, 1, None, torch.device("cuda", 0))


def test_slurm_variables_outside_a_job_step_are_ignored(monkeypatch):
    """A single-process command in an sbatch script does not wait for 15 peers that will never come."""
    assert read_launch(SBATCH_SHELL, visible_gpus=8) == Launch(0, 0, 1, None, torch.device("cuda", 0))
    for name in [*TORCHRUN, *(name for name in os.environ if name.startswith("SLURM_"))]:
        monkeypatch.delenv(name, raising=False)
    for name, value in SBATCH_SHELL.items():
        monkeypatch.setenv(name, value)
    assert init_distributed().world_size == 1 and not torch.distributed.is_initialized()


def test_a_multi_node_srun_step_meets_at_the_first_host_of_its_node_list():
    # SLURM binds one GPU per task: it is device 0 of the one this task sees.
    assert read_launch(SRUN_TASK, visible_gpus=1) == Launch(9, 1, 16, "tcp://gpu07:44200", torch.device("cuda", 0))
    assert read_launch(SRUN_TASK, visible_gpus=8).device == torch.device("cuda", 1)  # all 8 visible to every task
    assert read_launch(SRUN_TASK, visible_gpus=0).device == CPU
    # Every task of the step derives the same address and port; the job's next step another port.
    tasks = [dict(SRUN_TASK, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % 8)) for rank in range(16)]
    assert {read_launch(task, 1).init_method for task in tasks} == {"tcp://gpu07:44200"}
    assert read_launch(dict(SRUN_TASK, SLURM_STEP_ID="1"), 1).init_method == "tcp://gpu07:44201"
    # A step on part of the allocation meets on its own first node; MASTER_ADDR / MASTER_PORT override.
    part = dict(SRUN_TASK, SLURM_JOB_NODELIST="gpu[01-08]", SLURM_STEP_NODELIST="gpu[05-06]")
    assert read_launch(part, 1).init_method == "tcp://gpu05:44200"
    assert read_launch(dict(part, MASTER_ADDR="head", MASTER_PORT="1234"), 1).init_method == "tcp://head:1234"


def test_a_one_task_step_is_a_single_process():
    one = dict(SRUN_TASK, SLURM_PROCID="0", SLURM_LOCALID="0", SLURM_STEP_NUM_TASKS="1", SLURM_NTASKS="1")
    assert read_launch(one, visible_gpus=1) == Launch(0, 0, 1, None, torch.device("cuda", 0))


def test_torchrun_variables_come_first_and_are_used_as_they_are():
    """submitit exports torchrun's variables inside its SLURM step: they win over the SLURM ones."""
    assert read_launch(dict(SRUN_TASK, **TORCHRUN), visible_gpus=4) == \
        Launch(3, 3, 8, "env://", torch.device("cuda", 3))
    assert read_launch(TORCHRUN, visible_gpus=0) == Launch(3, 3, 8, "env://", CPU)


@pytest.mark.parametrize("env, visible, message", [
    (dict(TORCHRUN, LOCAL_WORLD_SIZE="8"), 4,
     r"8 processes on this machine but torch sees 4 GPUs \(CUDA_VISIBLE_DEVICES=unset\): start 4 per machine "
     r"\(make GPUS=4\)"),
    (dict(TORCHRUN, RANK="three"), 4, "RANK='three' is not an integer"),
    (dict(TORCHRUN, RANK="8"), 4, "rank 8 outside the world size 8 given by the torchrun variables"),
    ({k: v for k, v in TORCHRUN.items() if k != "MASTER_PORT"}, 4, "RANK and WORLD_SIZE are set but MASTER_PORT not"),
    ({k: v for k, v in SRUN_TASK.items() if "NODELIST" not in k}, 1, "set MASTER_ADDR to the host of rank 0"),
])
def test_unusable_launcher_variables_are_named(env, visible, message):
    with pytest.raises(LaunchError, match=message):
        read_launch(env, visible)
