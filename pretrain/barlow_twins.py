"""The Barlow Twins model and loss (Zbontar et al. 2021), exact under any number of processes.

The loss normalises each view's embeddings over the **global** batch (BatchNorm without affine, biased
variance, eps 1e-5), then penalises the cross-correlation matrix ``C = z1n^T z2n / N``::

    loss = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

in one of two forms with the same value and gradients: ``"cross_correlation"`` builds the D x D matrix (the
paper's), ``"gram"`` never does (``||C||_F^2`` from this process's rows of the two N x N Gram matrices, so
O(N_local * N * D) time); ``"auto"`` picks the one with fewer flops (gram when ``GRAM_CROSSOVER * N <= D``).

Every collective is autograd-aware, so the gradient is exactly dL/dtheta whatever the number of processes.
The official code all-reduces C outside autograd, which scales every gradient by 1/world_size: on the
paper's 32 GPUs LARS hid that for the weights (except through weight decay, 32x heavier) but biases and BN
parameters moved 1/32 as far. ``grad_scaling``: ``"exact"``; ``"paper"`` (dL/dtheta / 32 on any number of
processes, the paper's run); ``"official"`` (dL/dtheta / world_size). The loss value is the same in each.
"""
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as collectives  # what torch.distributed.nn.functional now defers to
import torchvision
from torch import nn

from bt_transfer.core.provenance import check_grad_scaling, gradient_divisor

LOSS_FORMS = ("auto", "cross_correlation", "gram")
# Flop-count crossover (see module docstring); a benchmark may tune it per accelerator.
GRAM_CROSSOVER = 2.0
BN_EPS = 1e-5


def _world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_sum(tensor):
    return collectives.all_reduce(tensor, "sum", dist.group.WORLD) if _world_size() > 1 else tensor


def _global_batch_norm(z1, z2, global_batch, eps):
    """Both views (each N x D) standardised per column with the mean and biased variance of the global
    batch, as a pair; under DDP both views share each collective."""
    if _world_size() == 1:
        # One fused op per view that keeps only its input (the caller's tensor) and the statistics for
        # backward, and no stacked copy: fewer N x D buffers at the peak (python -m bench loss).
        return tuple(nn.functional.batch_norm(z, None, None, training=True, eps=eps) for z in (z1, z2))
    views = torch.stack((z1, z2))
    mean = _global_sum(views.sum(dim=1, keepdim=True)) / global_batch
    centred = views - mean
    var = _global_sum(centred.square().sum(dim=1, keepdim=True)) / global_batch
    return (centred * torch.rsqrt(var + eps)).unbind()


def choose_form(global_batch, dim):
    """The cheaper form for these sizes (see the module docstring)."""
    return "gram" if GRAM_CROSSOVER * global_batch <= dim else "cross_correlation"


def _loss_cross_correlation(views, global_batch, lambd):
    view1, view2 = views
    c = _global_sum(view1.T @ view2) / global_batch
    diag = torch.diagonal(c)
    on_diag = (1 - diag).square().sum()
    off_diag = c.square().sum() - diag.square().sum()
    return on_diag + lambd * off_diag


class _GramTerms(torch.autograd.Function):
    """This process's part of ``N diag(C)`` and of ``N^2 ||C||_F^2`` as one vector (D + 1), from its
    normalised views (each n x D) and everyone's (each N x D; in one process, the views themselves).

    Its own backward writes the gradient of both terms into one n x D buffer per view. Autograd's
    would keep one buffer per term and per view and then their sum: at N=1024, D=16384 that is
    two N x D buffers more at the peak, the largest part of the peak (python -m bench loss).
    """

    @staticmethod
    def forward(ctx, view1, view2, everyone1, everyone2):
        # This process's rows of the two Gram matrices; their elementwise product summed over all
        # processes is N^2 ||C||_F^2.
        gram1, gram2 = view1 @ everyone1.T, view2 @ everyone2.T
        ctx.save_for_backward(view1, view2, everyone1, everyone2, gram1, gram2)
        frobenius_rows = (gram1 * gram2).sum()
        return torch.cat([(view1 * view2).sum(dim=0), frobenius_rows.view(1)])

    @staticmethod
    def backward(ctx, grad):
        view1, view2, everyone1, everyone2, gram1, gram2 = ctx.saved_tensors
        grad_diag, grad_frobenius = grad[:-1], grad[-1]
        # The Gram matrices are symmetric, so the gradient through everyone's rows equals the one through
        # this process's rows: count the latter twice and send none to ``everyone``. Summed over
        # processes this is the exact gradient; it takes one n x N x D product per view and no
        # backward all-gather.
        grad1 = (gram2 * (2 * grad_frobenius)) @ everyone1
        grad1.addcmul_(view2, grad_diag)
        grad2 = (gram1 * (2 * grad_frobenius)) @ everyone2
        grad2.addcmul_(view1, grad_diag)
        return grad1, grad2, None, None


def _loss_gram(views, global_batch, lambd):
    if _world_size() > 1:
        # One all-gather for both views; detached, as _GramTerms sends no gradient to everyone's rows.
        gathered = collectives.all_gather_single_autograd(torch.stack(views), 1, dist.group.WORLD)
        everyone = gathered.detach().unbind()
    else:
        everyone = views
    # One all-reduce carries this process's part of both terms.
    total = _global_sum(_GramTerms.apply(*views, *everyone))
    diag, frobenius_sq = total[:-1] / global_batch, total[-1] / global_batch**2
    on_diag = (1 - diag).square().sum()
    off_diag = frobenius_sq - diag.square().sum()
    return on_diag + lambd * off_diag


def barlow_twins_loss(z1, z2, lambd=0.0051, form="auto", eps=BN_EPS, grad_scaling="exact"):
    """Barlow Twins loss of the raw projector outputs ``z1``, ``z2`` (local batch x D) of the two views,
    with the gradient of ``grad_scaling`` (see the module docstring).

    Computed in at least float32 whatever the autocast dtype: the sums over D x D terms lose too
    much in half precision.
    """
    if form not in LOSS_FORMS:
        raise ValueError(f"loss form {form!r}: expected one of {LOSS_FORMS}")
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"embeddings must be two N x D tensors of the same shape, "
                         f"got {tuple(z1.shape)} and {tuple(z2.shape)}")
    world_size = _world_size()
    divisor = gradient_divisor(grad_scaling, world_size)
    local_batch, dim = z1.shape
    global_batch = local_batch * world_size
    if global_batch < 2:
        raise ValueError("the Barlow Twins loss needs a global batch of at least 2 (batch statistics)")
    if form == "auto":
        form = choose_form(global_batch, dim)
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(z1.device.type, enabled=False):
        views = _global_batch_norm(z1.to(dtype), z2.to(dtype), global_batch, eps)
        compute = _loss_gram if form == "gram" else _loss_cross_correlation
        loss = compute(views, global_batch, lambd)
    if divisor != 1:
        # The same value (loss - loss.detach() is exactly 0) with the gradient divided by ``divisor``.
        loss = loss.detach() + (loss - loss.detach()) / divisor
    return loss


def parse_projector(spec):
    """``"8192-8192-8192"`` -> [8192, 8192, 8192], with a clear error for anything else."""
    try:
        sizes = [int(part) for part in str(spec).split("-")]
    except ValueError:
        sizes = []
    if not sizes or any(size <= 0 for size in sizes):
        raise ValueError(f"projector {spec!r}: expected positive layer widths joined by '-', e.g. '8192-8192-8192'")
    return sizes


def build_projector(in_features, spec):
    """[Linear(bias=False) -> BatchNorm1d -> ReLU] per hidden layer, then a final Linear(bias=False)."""
    sizes = [in_features] + parse_projector(spec)
    layers = []
    for width_in, width_out in zip(sizes[:-2], sizes[1:-1]):
        layers += [nn.Linear(width_in, width_out, bias=False), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
    return nn.Sequential(*layers)


class BarlowTwins(nn.Module):
    """ResNet-50 backbone + projector; ``forward(y1, y2)`` returns the loss of the two views.

    Attribute names match the official model (``backbone``, ``projector``, ``bn``) so official
    checkpoints and ours share keys. ``bn`` holds the loss's normalisation (BatchNorm1d without
    affine): the loss uses its ``eps`` and global batch statistics, never its running statistics,
    exactly as the official model does in training mode.
    """

    def __init__(self, projector="8192-8192-8192", lambd=0.0051, loss_form="auto", grad_scaling="exact"):
        super().__init__()
        if loss_form not in LOSS_FORMS:
            raise ValueError(f"loss form {loss_form!r}: expected one of {LOSS_FORMS}")
        check_grad_scaling(grad_scaling)
        self.lambd, self.loss_form, self.grad_scaling = lambd, loss_form, grad_scaling
        self.backbone = torchvision.models.resnet50(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        self.projector = build_projector(2048, projector)
        self.bn = nn.BatchNorm1d(parse_projector(projector)[-1], affine=False)

    def forward(self, y1, y2):
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        return barlow_twins_loss(z1, z2, self.lambd, self.loss_form, self.bn.eps, self.grad_scaling)
