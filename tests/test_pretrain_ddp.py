"""Exact gradients under DDP: two gloo processes with half the batch each give the loss, the
gradients and the LARS step of one process on the whole batch; with official_grad_scaling the
gradients are halved."""
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
CASES = [(form, official) for form in ("cross_correlation", "gram") for official in (False, True)]


class TinyTwins(nn.Module):
    """BarlowTwins with a linear encoder: the same DDP forward (both views in one call) and the same loss."""

    def __init__(self, form, official_grad_scaling):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Linear(IN_DIM, EMBED_DIM)
        self.form, self.official_grad_scaling = form, official_grad_scaling

    def forward(self, x1, x2):
        return barlow_twins_loss(self.encoder(x1), self.encoder(x2), form=self.form,
                                 official_grad_scaling=self.official_grad_scaling)


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
        for form, official in CASES:
            model = DistributedDataParallel(TinyTwins(form, official).double())
            results[f"{form}/{official}"] = loss_grads_and_step(model, x1, x2)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        cleanup()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, free_port(), str(out_dir)), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("form,official", CASES)
def test_two_processes_match_one_process_on_the_whole_batch(ddp_results, form, official):
    expected_loss, expected_grads, expected_params = loss_grads_and_step(TinyTwins(form, False).double(), *inputs())
    scale = 0.5 if official else 1.0
    for rank in ddp_results:
        loss, grads, params = rank[f"{form}/{official}"]
        torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=0)
        for got, want in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(got, want * scale, rtol=1e-9, atol=1e-12)
        if not official:  # the step of exact gradients is the single-process step
            for got, want in zip(params, expected_params, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
