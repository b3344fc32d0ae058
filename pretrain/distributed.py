"""One function that sets up distributed training for torchrun, SLURM or a single process.

Backend: NCCL when CUDA is available, gloo otherwise, so the same code runs the CPU tests
and the GPU cluster.
"""
import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def _env_int(*names):
    for name in names:
        if name in os.environ:
            return int(os.environ[name])
    return None


def init_distributed(dist_url=None, timeout_minutes=30):
    """Initialise the process group from the launcher's environment and return this process's place.

    - torchrun sets RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT;
    - ``srun`` (or submitit) sets SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS, and the master address
      comes from MASTER_ADDR/MASTER_PORT if set (submitit sets them) or ``dist_url``;
    - anything else is a single process: no process group is created.
    """
    rank = _env_int("RANK", "SLURM_PROCID")
    world_size = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    local_rank = _env_int("LOCAL_RANK", "SLURM_LOCALID")
    cuda = torch.cuda.is_available()
    if rank is None or world_size is None or world_size == 1:
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return DistInfo(0, 0, 1, device)
    local_rank = rank % max(torch.cuda.device_count(), 1) if local_rank is None else local_rank
    if dist_url is None:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        dist_url = "env://"
    if cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", init_method=dist_url, rank=rank, world_size=world_size,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return DistInfo(rank, local_rank, world_size, device)


def cleanup():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def free_port():
    """A free TCP port on this machine (for single-node launches and tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
