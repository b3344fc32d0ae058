"""The benchmark's references compute what the suite computes, so its speed ratios compare equal work.

No timing is asserted here: benchmarks are not tests.
"""
import pytest
import torch
from torch import nn

from bench import harness, reference
from pretrain.barlow_twins import BarlowTwins, barlow_twins_loss
from pretrain.lars import LARS, param_groups, set_learning_rate


def embeddings(n, d, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=generator, dtype=torch.float64).mul_(3).add_(1).requires_grad_()
            for _ in range(2)]


def test_off_diagonal_is_every_element_off_the_diagonal_in_row_order():
    c = torch.arange(16.0).view(4, 4)
    expected = c[~torch.eye(4, dtype=torch.bool)]
    assert torch.equal(reference.off_diagonal(c), expected)


@pytest.mark.parametrize("n, d", [(32, 8), (8, 64), (17, 17)])
@pytest.mark.parametrize("form", ["cross_correlation", "gram", "auto"])
def test_reference_loss_and_gradients_equal_the_suites(n, d, form):
    z1, z2 = embeddings(n, d, seed=n * d)
    bn = nn.BatchNorm1d(d, affine=False).double()
    expected = reference.cross_correlation_loss(z1, z2, reference.LAMBD, bn)
    expected_grads = torch.autograd.grad(expected, (z1, z2))
    ours = barlow_twins_loss(z1, z2, lambd=reference.LAMBD, form=form)
    grads = torch.autograd.grad(ours, (z1, z2))
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=0)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_reference_lars_takes_the_same_steps_as_the_suites():
    torch.manual_seed(0)
    ours_model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    ref_model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3, bias=False))
    ref_model.load_state_dict(ours_model.state_dict())
    ours = LARS(param_groups(ours_model, weight_decay=reference.WEIGHT_DECAY))
    set_learning_rate(ours, 1.0, (reference.LR_WEIGHTS, reference.LR_BIASES))
    ref = reference.reference_optimizer(ref_model)
    x = torch.randn(16, 6)
    for _ in range(3):
        for model, optimizer in ((ours_model, ours), (ref_model, ref)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for (name, got), want in zip(ours_model.state_dict().items(), ref_model.state_dict().values()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7, msg=f"parameter {name} differs")


def test_reference_model_has_the_suites_keys_and_loss():
    torch.manual_seed(0)
    ours = BarlowTwins(projector="64-32")
    with torch.device("meta"):  # no second random init of ResNet-50: the weights come from ours
        ref = reference.ReferenceBarlowTwins(projector="64-32")
    ref.load_state_dict(ours.state_dict(), assign=True)  # strict: every key matches
    y1, y2 = torch.randn(2, 6, 3, 32, 32)
    torch.testing.assert_close(ours(y1, y2), ref(y1, y2), rtol=1e-5, atol=0)


def test_peak_memory_counts_the_tensors_a_function_allocates():
    device = torch.device("cpu")
    size = 1 << 20  # float32 elements: 4 MiB each
    kept = []

    def two_live_then_one():
        a = torch.empty(size)
        b = torch.empty(size)
        del a, b
        kept.append(torch.empty(size))

    peak = harness.peak_memory_increase(two_live_then_one, device)
    assert 8 * 2**20 <= peak < 8 * 2**20 + 2**16


def test_interpolated_crossover_lies_where_the_ratio_crosses_one():
    from bench.loss import interpolate_crossover

    assert interpolate_crossover([(0.25, 0.5), (0.5, 2.0)]) == pytest.approx(0.25 * 2 ** 0.5)
    assert interpolate_crossover([(0.25, 0.5), (0.5, 0.9)]) is None
