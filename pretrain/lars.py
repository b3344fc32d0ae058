"""LARS (You et al. 2017) and the learning-rate schedule of the official Barlow Twins code.

Per parameter p with gradient g, in each step::

    d  = g + weight_decay * p                          (skipped for excluded parameters)
    d *= eta * ||p|| / ||d||  if both norms > 0 else 1 (skipped for excluded parameters)
    mu = momentum * mu + d
    p -= lr * mu

Biases and BatchNorm parameters (``ndim == 1``) are excluded from both weight decay and the trust
ratio; they live in their own parameter group (see ``param_groups``) because they also get their
own learning-rate multiplier (0.0048 vs 0.2 for weights). The step uses ``torch._foreach_*`` ops so
the ~160 parameters of ResNet-50 + projector cost a few kernel launches, not ~1000.
"""
import math

import torch
from torch.optim import Optimizer


def param_groups(model, weight_decay=1e-6):
    """[weights (decay + LARS), biases and norm parameters (neither)], in the official order."""
    weights = [p for p in model.parameters() if p.requires_grad and p.ndim != 1]
    biases = [p for p in model.parameters() if p.requires_grad and p.ndim == 1]
    return [
        {"params": weights, "weight_decay": weight_decay, "lars_adaptation": True, "name": "weights"},
        {"params": biases, "weight_decay": 0.0, "lars_adaptation": False, "name": "biases"},
    ]


class LARS(Optimizer):
    def __init__(self, params, lr=0.0, momentum=0.9, eta=0.001, weight_decay=0.0, lars_adaptation=True):
        if lr < 0 or not 0 <= momentum < 1 or eta <= 0 or weight_decay < 0:
            raise ValueError(f"LARS: invalid lr={lr}, momentum={momentum}, eta={eta} or weight_decay={weight_decay}")
        defaults = dict(lr=lr, momentum=momentum, eta=eta, weight_decay=weight_decay, lars_adaptation=lars_adaptation)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            updates = [p.grad for p in params]
            if group["weight_decay"]:
                updates = torch._foreach_add(updates, params, alpha=group["weight_decay"])
            if group["lars_adaptation"]:
                param_norms = torch.stack(torch._foreach_norm(params))
                update_norms = torch.stack(torch._foreach_norm(updates))
                trust = torch.where(
                    (param_norms > 0) & (update_norms > 0),
                    group["eta"] * param_norms / update_norms,
                    torch.ones_like(param_norms),
                )
                updates = torch._foreach_mul(updates, list(trust.unbind()))
            momenta = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                momenta.append(state["momentum_buffer"])
            torch._foreach_mul_(momenta, group["momentum"])
            torch._foreach_add_(momenta, updates)
            torch._foreach_add_(params, momenta, alpha=-group["lr"])
        return loss


def base_learning_rate(batch_size):
    """The official linear scaling rule: batch / 256, before the group multipliers (0.2 and 0.0048)."""
    return batch_size / 256


def learning_rate(step, total_steps, warmup_steps, base_lr):
    """Linear warmup from 0 over ``warmup_steps``, then cosine from ``base_lr`` to ``base_lr / 1000``."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    q = 0.5 * (1 + math.cos(math.pi * progress))
    end_lr = base_lr * 0.001
    return base_lr * q + end_lr * (1 - q)


def set_learning_rate(optimizer, lr, multipliers):
    """Give each parameter group ``lr`` times its multiplier (weights 0.2, biases 0.0048)."""
    for group, multiplier in zip(optimizer.param_groups, multipliers, strict=True):
        group["lr"] = lr * multiplier
