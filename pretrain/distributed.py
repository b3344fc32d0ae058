"""One function that sets up distributed training for torchrun, SLURM or a single process.

Which launcher started this process is read from its environment by ``read_launch``, a pure function:

- torchrun (and submitit, which exports the same variables) sets RANK / WORLD_SIZE / LOCAL_RANK /
  MASTER_ADDR / MASTER_PORT: used as they are;
- a SLURM job step (``srun``, which sets SLURM_STEP_ID) gives SLURM_PROCID / SLURM_STEP_NUM_TASKS /
  SLURM_LOCALID; the master is the first host of the step's node list, on a port derived from the job and
  step ids, unless MASTER_ADDR / MASTER_PORT are set. Outside a step (the shell of an sbatch script) the
  SLURM variables describe the job, not this process, and are ignored;
- anything else is a single process: no process group.

The GPU is LOCAL_RANK modulo the GPUs this process sees: all of the machine's under torchrun, one when SLURM
binds a GPU per task. Backend: NCCL on GPUs, gloo otherwise, so the same code runs the CPU tests.
"""
import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bt_transfer.core.errors import UserError
from bt_transfer.core.text import listing

SLURM_PORTS = (20000, 60000)


class LaunchError(UserError):
    """A launcher environment that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1


@dataclass(frozen=True)
class Launch:
    """This process's place, as its launcher described it; ``init_method`` is None for a single process."""
    rank: int
    local_rank: int
    world_size: int
    init_method: str | None
    device: torch.device


def expand_hostlist(text):
    """SLURM's compressed host list as host names: ``gpu[01-03,7],login1`` -> gpu01, gpu02, gpu03, gpu7, login1.

    A range keeps the zero padding of its first number; several bracket groups in one name combine
    (``r[1-2]n[1-2]`` -> r1n1, r1n2, r2n1, r2n2).
    """
    group = r"\[\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*\]"
    name = rf"(?:[^,\[\]]|{group})+"
    if not re.fullmatch(rf"{name}(?:,{name})*", text):
        raise LaunchError(f"node list {text!r} is not a SLURM host list (e.g. gpu[01-03,7],login1); "
                          "set MASTER_ADDR to the host of rank 0")
    hosts = []
    for pattern in re.findall(name, text):
        names = [""]
        for part in re.split(rf"({group})", pattern):
            if part.startswith("["):
                numbers = []
                for item in part[1:-1].split(","):
                    first, _, last = item.partition("-")
                    if int(last or first) < int(first):
                        raise LaunchError(f"node list {text!r}: range {item} runs backwards")
                    numbers += [f"{n:0{len(first)}d}" for n in range(int(first), int(last or first) + 1)]
                names = [prefix + number for prefix in names for number in numbers]
            else:
                names = [prefix + part for prefix in names]
        hosts += names
    return hosts


def _integer(env, name, default=None):
    value = env.get(name)
    if value is None:
        if default is None:
            raise LaunchError(f"{name} is not set; the launcher that set the other variables should set it too")
        return default
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"{name}={value!r} is not an integer") from None


def _slurm_master(env):
    """``tcp://host:port`` of rank 0 in a SLURM step (MASTER_ADDR / MASTER_PORT override either part)."""
    address = env.get("MASTER_ADDR")
    if not address:
        node_list = next((env[n] for n in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")
                          if env.get(n)), None)
        if node_list is None:
            raise LaunchError("a SLURM step without SLURM_STEP_NODELIST or SLURM_JOB_NODELIST: "
                              "set MASTER_ADDR to the host of rank 0")
        address = expand_hostlist(node_list)[0]
    port = env.get("MASTER_PORT")
    if not port:
        # The same on every task of a step and different for the next step of the job, without talking.
        job, step = _integer(env, "SLURM_JOB_ID"), _integer(env, "SLURM_STEP_ID")
        low, high = SLURM_PORTS
        port = low + (job * 100 + step) % (high - low)
    return f"tcp://{address}:{port}"


def read_launch(env, visible_gpus):
    """This process's rank, world size, rendezvous and device from its environment ``env`` (a mapping of
    variables) and the number of GPUs it sees; see the module docstring for the rules."""
    if "RANK" in env and "WORLD_SIZE" in env:
        launcher, rank, world_size = "torchrun", _integer(env, "RANK"), _integer(env, "WORLD_SIZE")
        local_rank = _integer(env, "LOCAL_RANK", default=rank)
        per_machine = _integer(env, "LOCAL_WORLD_SIZE", default=0)
        if world_size > 1 and visible_gpus and per_machine > visible_gpus:
            raise LaunchError(f"{per_machine} processes on this machine but torch sees {visible_gpus} GPUs "
                              f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', 'unset')}): start "
                              f"{visible_gpus} per machine (make GPUS={visible_gpus})")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name)]
        if world_size > 1 and missing:
            raise LaunchError(f"RANK and WORLD_SIZE are set but {' and '.join(missing)} not: start the processes "
                              "with torchrun, or set both to rank 0's host and a free port")
        init_method = "env://"
    elif "SLURM_STEP_ID" in env and "SLURM_PROCID" in env:
        launcher, rank = "slurm", _integer(env, "SLURM_PROCID")
        world_size = _integer(env, "SLURM_STEP_NUM_TASKS", default=_integer(env, "SLURM_NTASKS", default=1))
        local_rank = _integer(env, "SLURM_LOCALID", default=0)
        init_method = _slurm_master(env) if world_size > 1 else None
    else:
        launcher, rank, world_size, local_rank = "single", 0, 1, 0
    if not 0 <= rank < world_size:
        raise LaunchError(f"rank {rank} outside the world size {world_size} given by the {launcher} variables")
    device = torch.device("cuda", local_rank % visible_gpus) if visible_gpus else torch.device("cpu")
    if world_size == 1:
        return Launch(0, 0, 1, None, device)
    return Launch(rank, local_rank, world_size, init_method, device)


def init_distributed(timeout_minutes=30):
    """Initialise the process group as this process's launcher describes it (see ``read_launch``) and return
    its place; a single process gets no process group."""
    launch = read_launch(os.environ, torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if launch.device.type == "cuda":
        torch.cuda.set_device(launch.device)
    if launch.world_size > 1:
        dist.init_process_group(
            backend="nccl" if launch.device.type == "cuda" else "gloo", init_method=launch.init_method,
            rank=launch.rank, world_size=launch.world_size, timeout=datetime.timedelta(minutes=timeout_minutes),
        )
    return DistInfo(launch.rank, launch.local_rank, launch.world_size, launch.device)


class DisagreementError(UserError):
    """Processes that should share a value do not (usually: an output folder not every process sees)."""


def require_same_everywhere(value, info, what, remedy):
    """Rank 0's ``value`` (an integer), after every process has checked its own against it: if any differs,
    all of them stop with the same one-line error, instead of running apart and hanging."""
    if not info.distributed:
        return value
    mine = torch.tensor([value], dtype=torch.int64, device=info.device)
    everyone = [torch.empty_like(mine) for _ in range(info.world_size)]
    dist.all_gather(everyone, mine)
    values = [int(v.item()) for v in everyone]
    differ = [f"rank {rank} {v}" for rank, v in enumerate(values) if v != values[0]]
    if differ:
        raise DisagreementError(f"{what} differs between processes: rank 0 {values[0]}, {listing(differ)}; {remedy}")
    return values[0]


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port():
    """A free TCP port on this machine (for single-node launches and tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
