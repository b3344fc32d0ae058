"""LARS on hand-computable cases, its parameter groups, and the learning-rate schedule."""
import math

import pytest
import torch
from torch import nn

from pretrain.lars import LARS, base_learning_rate, learning_rate, param_groups, set_learning_rate


def make_param(values, grad):
    p = nn.Parameter(torch.tensor(values, dtype=torch.float64))
    p.grad = torch.tensor(grad, dtype=torch.float64)
    return p


def test_trust_ratio_weight_decay_and_momentum_by_hand():
    weight = make_param([[3.0, 4.0]], [[0.3, 0.4]])      # ||p|| = 5
    zero_weight = make_param([[0.0, 0.0]], [[1.0, 2.0]])  # ||p|| = 0 -> trust ratio 1
    no_grad_weight = make_param([[1.0, 0.0]], [[0.0, 0.0]])  # ||d|| = 0 -> trust ratio 1, no decay term either
    bias = make_param([1.0, 2.0], [0.5, -0.5])           # excluded: no decay, no trust ratio
    opt = LARS(
        [
            {"params": [weight, zero_weight], "weight_decay": 0.1, "lars_adaptation": True},
            {"params": [no_grad_weight], "weight_decay": 0.0, "lars_adaptation": True},
            {"params": [bias], "weight_decay": 0.0, "lars_adaptation": False},
        ],
        lr=1.0, momentum=0.9, eta=0.001,
    )
    opt.step()
    # d = g + 0.1 p = [0.6, 0.8], ||d|| = 1, trust = 0.001 * 5 / 1 = 0.005 -> d = [0.003, 0.004].
    torch.testing.assert_close(weight.data, torch.tensor([[2.997, 3.996]], dtype=torch.float64))
    torch.testing.assert_close(zero_weight.data, torch.tensor([[-1.0, -2.0]], dtype=torch.float64))
    torch.testing.assert_close(no_grad_weight.data, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(bias.data, torch.tensor([0.5, 2.5], dtype=torch.float64))
    # Second step, same gradient, lr 2: mu = 0.9 mu + d.
    set_learning_rate(opt, 2.0, (1.0, 1.0, 1.0))
    opt.step()
    mu = 0.9 * torch.tensor([0.5, -0.5]) + torch.tensor([0.5, -0.5])
    torch.testing.assert_close(bias.data, (torch.tensor([0.5, 2.5]) - 2.0 * mu).double())
    after_first = torch.tensor([[2.997, 3.996]], dtype=torch.float64)
    d2 = torch.tensor([[0.3, 0.4]], dtype=torch.float64) + 0.1 * after_first
    d2 = d2 * 0.001 * after_first.norm() / d2.norm()
    expected = after_first - 2.0 * (0.9 * torch.tensor([[0.003, 0.004]], dtype=torch.float64) + d2)
    torch.testing.assert_close(weight.data, expected)


def test_param_groups_exclude_biases_and_norm_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    weights, biases = param_groups(model, weight_decay=1e-6)
    assert [tuple(p.shape) for p in weights["params"]] == [(4, 3, 3, 3), (2, 4)]
    assert [tuple(p.shape) for p in biases["params"]] == [(4,), (4,), (4,), (2,)]
    assert weights["weight_decay"] == 1e-6 and weights["lars_adaptation"]
    assert biases["weight_decay"] == 0 and not biases["lars_adaptation"]
    opt = LARS([weights, biases])
    set_learning_rate(opt, 1.5, (0.2, 0.0048))
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.3), pytest.approx(0.0072)]


def test_schedule_warmup_and_cosine_end_points():
    base = base_learning_rate(2048)
    assert base == 8.0
    steps_per_epoch, epochs = 625, 1000
    total, warmup = steps_per_epoch * epochs, steps_per_epoch * 10
    assert learning_rate(0, total, warmup, base) == 0.0
    assert learning_rate(warmup // 2, total, warmup, base) == pytest.approx(base / 2)
    assert learning_rate(warmup, total, warmup, base) == pytest.approx(base)
    midway = warmup + (total - warmup) // 2
    assert learning_rate(midway, total, warmup, base) == pytest.approx((base + base * 0.001) / 2)
    last = learning_rate(total - 1, total, warmup, base)
    q = 0.5 * (1 + math.cos(math.pi * (total - 1 - warmup) / (total - warmup)))
    assert last == pytest.approx(base * q + base * 0.001 * (1 - q))
    assert base * 0.001 < last < base * 0.00101


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(ValueError, match="momentum=1.5"):
        LARS([nn.Parameter(torch.zeros(2))], momentum=1.5)
