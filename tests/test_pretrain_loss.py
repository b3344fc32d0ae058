"""The Barlow Twins loss: both forms against an independent reference (the paper's pseudocode)."""
import pytest
import torch
from torch import nn

from pretrain.barlow_twins import BarlowTwins, barlow_twins_loss, build_projector, choose_form


def reference_loss(z1, z2, lambd):
    """Algorithm 1 of the paper, written the obvious way with nn.BatchNorm1d in training mode."""
    n, d = z1.shape
    bn = nn.BatchNorm1d(d, affine=False).to(z1.dtype)
    c = bn(z1).T @ bn(z2) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


def value_and_grads(loss_fn, z1, z2):
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = loss_fn(z1, z2)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    return loss.detach(), g1, g2


@pytest.mark.parametrize("n,d", [(2, 3), (8, 64), (32, 16), (16, 300)])
@pytest.mark.parametrize("form", ["cross_correlation", "gram", "auto"])
def test_forms_match_reference_values_and_gradients(n, d, form):
    gen = torch.Generator().manual_seed(n * 1000 + d)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3 + 1
    z2 = z1 * 0.5 + torch.randn(n, d, generator=gen, dtype=torch.float64)
    expected = value_and_grads(lambda a, b: reference_loss(a, b, 0.0051), z1, z2)
    # float64 in, float64 computation: agreement to rounding.
    got = value_and_grads(lambda a, b: barlow_twins_loss(a, b, 0.0051, form=form), z1, z2)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    # float32, the training dtype: 1e-5 relative on the value.
    got32 = value_and_grads(lambda a, b: barlow_twins_loss(a, b, 0.0051, form=form), z1.float(), z2.float())
    torch.testing.assert_close(got32[0].double(), expected[0], rtol=1e-5, atol=0)
    for e, g in zip(expected[1:], got32[1:]):
        torch.testing.assert_close(g.double(), e, rtol=1e-4, atol=1e-5 * e.abs().max().item() + 1e-8)


def test_loss_invariant_to_per_dimension_affine_rescaling():
    gen = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(16, 32, generator=gen, dtype=torch.float64) for _ in range(2))
    scale = torch.rand(32, generator=gen, dtype=torch.float64) * 10 + 0.1
    shift = torch.randn(32, generator=gen, dtype=torch.float64) * 5
    for form in ("cross_correlation", "gram"):
        base = barlow_twins_loss(z1, z2, form=form)
        moved = barlow_twins_loss(z1 * scale + shift, z2 * scale.flip(0) - shift, form=form)
        # eps in the normalisation makes the invariance approximate; tiny for these variances.
        torch.testing.assert_close(moved, base, rtol=1e-4, atol=0)


def test_perfectly_correlated_identical_views_have_small_loss_and_lambda_weights_off_diagonal():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    # Identical views: diag(C) = var/(var+eps) ~ 1, so only the off-diagonal term remains.
    off_diag_only = barlow_twins_loss(z, z, lambd=1.0) - barlow_twins_loss(z, z, lambd=0.0)
    assert barlow_twins_loss(z, z, lambd=0.0) < 1e-6
    assert off_diag_only > 0


def test_auto_rule_and_bad_input():
    assert choose_form(global_batch=2048, dim=8192) == "gram"
    assert choose_form(global_batch=2048, dim=2048) == "cross_correlation"
    z = torch.randn(4, 8)
    with pytest.raises(ValueError, match="loss form 'fast'"):
        barlow_twins_loss(z, z, form="fast")
    with pytest.raises(ValueError, match="same shape"):
        barlow_twins_loss(z, z[:, :4])
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(z[:1], z[:1])


def test_projector_layout_and_model_attribute_names():
    projector = build_projector(2048, "64-32-16")
    kinds = [type(m).__name__ for m in projector]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert all(m.bias is None for m in projector if isinstance(m, nn.Linear))
    assert [m.out_features for m in projector if isinstance(m, nn.Linear)] == [64, 32, 16]
    with pytest.raises(ValueError, match="'8192-x'"):
        build_projector(2048, "8192-x")
    model = BarlowTwins(projector="32-16")
    assert isinstance(model.backbone.fc, nn.Identity)
    assert isinstance(model.bn, nn.BatchNorm1d) and not model.bn.affine and model.bn.num_features == 16
    # zero_init_residual: the last BN of every bottleneck starts at 0.
    assert model.backbone.layer1[0].bn3.weight.abs().sum() == 0
    y = torch.randn(2, 3, 32, 32)
    loss = model(y, y.flip(-1))
    assert loss.ndim == 0 and torch.isfinite(loss)
