"""Gradients under DDP: two gloo processes with half the batch each give the loss, the gradients and the
LARS step of one process on the whole batch. Gradient scaling: ``paper`` is the exact gradient / 32 on one
process and on two (so its step does not depend on the number of processes), ``official`` is exact /
world_size."""
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pretrain.barlow_twins import barlow_twins_loss
from pretrain.distributed import cleanup, free_port, init_distributed
from pretrain.lars import LARS, param_groups

BATCH, IN_DIM, EMBED_DIM = 8, 6, 12
CASES = [(form, scaling) for form in ("cross_correlation", "gram") for scaling in ("exact", "paper", "official")]


def divisor(scaling, world_size):
    """What each scaling divides the exact gradient by (the paper's run: the official code on 32 GPUs)."""
    return {"exact": 1, "paper": 32, "official": world_size}[scaling]


class TinyTwins(nn.Module):
    """BarlowTwins with a linear encoder: the same DDP forward (both views in one call) and the same loss."""

    def __init__(self, form, grad_scaling):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(IN_DIM, EMBED_DIM)
        self.form, self.grad_scaling = form, grad_scaling

    def forward(self, x1, x2):
        return barlow_twins_loss(self.encoder(x1), self.encoder(x2), form=self.form, grad_scaling=self.grad_scaling)


def inputs():
    gen = torch.Generator().manual_seed(1)
    x1 = torch.randn(BATCH, IN_DIM, generator=gen, dtype=torch.float64)
    return x1, x1 + 0.3 * torch.randn(BATCH, IN_DIM, generator=gen, dtype=torch.float64)


def loss_grads_and_step(model, x1, x2):
    """The loss, the gradients, and the parameters after one LARS step."""
    loss = model(x1, x2)
    loss.backward()
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    grads = [p.grad.clone() for p in inner.parameters()]
    LARS(param_groups(inner, weight_decay=1e-4), lr=0.5).step()
    return loss.detach(), grads, [p.detach().clone() for p in inner.parameters()]


def worker(rank, world_size, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    info = init_distributed()
    try:
        x1, x2 = (x.chunk(world_size)[info.rank] for x in inputs())
        results = {}
        for form, scaling in CASES:
            model = DistributedDataParallel(TinyTwins(form, scaling).double())
            results[f"{form}/{scaling}"] = loss_grads_and_step(model, x1, x2)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("form,scaling", CASES)
def test_one_process_scales_the_exact_gradient_and_keeps_the_loss(form, scaling):
    exact_loss, exact_grads, _ = loss_grads_and_step(TinyTwins(form, "exact").double(), *inputs())
    loss, grads, _ = loss_grads_and_step(TinyTwins(form, scaling).double(), *inputs())
    assert torch.equal(loss, exact_loss)
    for got, exact in zip(grads, exact_grads, strict=True):
        assert torch.equal(got, exact / divisor(scaling, 1))  # a power of two: exact in floating point


@pytest.mark.parametrize("form,scaling", CASES)
def test_two_processes_match_one_process_on_the_whole_batch(ddp_results, form, scaling):
    expected_loss, expected_grads, _ = loss_grads_and_step(TinyTwins(form, "exact").double(), *inputs())
    # The step of the same scaling in one process: paper and exact take it on any number of processes.
    _, _, expected_params = loss_grads_and_step(TinyTwins(form, scaling).double(), *inputs())
    for rank in ddp_results:
        loss, grads, params = rank[f"{form}/{scaling}"]
        torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=0)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want / divisor(scaling, 2), rtol=1e-9, atol=1e-12)
        if scaling != "official":
            for got, want in zip(params, expected_params, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
