"""The official facebookresearch/barlowtwins formulation, restated plainly: what the suite is measured against.

Written from the published algorithm (Zbontar et al. 2021, Algorithm 1, and the official main.py's structure),
deliberately straightforward: BatchNorm of each view, the full DxD cross-correlation, an off-diagonal copy, a
per-parameter LARS loop and the PIL augmentation pipeline. Single process, so there is no all-reduce.
"""
import random

import torch
import torchvision
from PIL import Image, ImageFilter, ImageOps
from torch import nn
from torchvision import transforms

LAMBD = 0.0051
PROJECTOR = "8192-8192-8192"
# The official learning rates at batch 256 (weights, biases/BN) and weight decay.
LR_WEIGHTS, LR_BIASES, WEIGHT_DECAY = 0.2, 0.0048, 1.5e-6
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- loss -------------------------------------------------------------------------------------------

def off_diagonal(c):
    """Every off-diagonal element of a square matrix, as a new flat tensor (the official trick: a copy)."""
    n, m = c.shape
    assert n == m
    return c.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def cross_correlation_loss(z1, z2, lambd=LAMBD, bn=None):
    """Barlow Twins loss exactly as the official model computes it, from projector outputs z1, z2 (N x D)."""
    n, d = z1.shape
    bn = bn if bn is not None else nn.BatchNorm1d(d, affine=False).to(z1.device)
    c = bn(z1).T @ bn(z2)
    c.div_(n)
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return on_diag + lambd * off_diag


# --- model ------------------------------------------------------------------------------------------

class ReferenceBarlowTwins(nn.Module):
    """ResNet-50 trunk, Linear-BN-ReLU projector, affine-free BN before the cross-correlation."""

    def __init__(self, projector=PROJECTOR, lambd=LAMBD):
        super().__init__()
        self.lambd = lambd
        self.backbone = torchvision.models.resnet50(zero_init_residual=True)
        self.backbone.fc = nn.Identity()
        sizes = [2048] + [int(s) for s in projector.split("-")]
        layers = []
        for width_in, width_out in zip(sizes[:-2], sizes[1:-1]):
            layers += [nn.Linear(width_in, width_out, bias=False), nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)

    def forward(self, y1, y2):
        z1 = self.projector(self.backbone(y1))
        z2 = self.projector(self.backbone(y2))
        return cross_correlation_loss(z1, z2, self.lambd, self.bn)


# --- optimizer --------------------------------------------------------------------------------------

def exclude_bias_and_norm(p):
    return p.ndim == 1


class ReferenceLARS(torch.optim.Optimizer):
    """LARS as the official code has it: one Python loop over parameters, several temporaries each."""

    def __init__(self, params, lr, weight_decay=0.0, momentum=0.9, eta=0.001,
                 weight_decay_filter=None, lars_adaptation_filter=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta,
                        weight_decay_filter=weight_decay_filter, lars_adaptation_filter=lars_adaptation_filter)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                dp = p.grad
                if dp is None:
                    continue
                if group["weight_decay_filter"] is None or not group["weight_decay_filter"](p):
                    dp = dp.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation_filter"] is None or not group["lars_adaptation_filter"](p):
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    trust = torch.where(param_norm > 0.0,
                                        torch.where(update_norm > 0, group["eta"] * param_norm / update_norm, one),
                                        one)
                    dp = dp.mul(trust)
                state = self.state[p]
                if "mu" not in state:
                    state["mu"] = torch.zeros_like(p)
                mu = state["mu"]
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])


def reference_optimizer(model, lr=LR_WEIGHTS, lr_biases=LR_BIASES, weight_decay=WEIGHT_DECAY):
    """Two groups as in the official run: weights, and biases/BN parameters (no decay, no adaptation)."""
    weights = [p for p in model.parameters() if p.ndim != 1]
    biases = [p for p in model.parameters() if p.ndim == 1]
    groups = [{"params": weights, "lr": lr}, {"params": biases, "lr": lr_biases}]
    return ReferenceLARS(groups, lr=lr, weight_decay=weight_decay,
                         weight_decay_filter=exclude_bias_and_norm, lars_adaptation_filter=exclude_bias_and_norm)


# --- augmentation -----------------------------------------------------------------------------------

class GaussianBlur:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() < self.p:
            return img.filter(ImageFilter.GaussianBlur(random.random() * 1.9 + 0.1))
        return img


class Solarization:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


def _view(blur_p, solarize_p, size):
    return transforms.Compose([
        transforms.RandomResizedCrop(size, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(p=0.5),
        transforms.RandomApply([transforms.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
        transforms.RandomGrayscale(p=0.2),
        GaussianBlur(blur_p),
        Solarization(solarize_p),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class ReferenceTransform:
    """Both views of one image: blur always and never solarise, then blur 10% and solarise 20%."""

    def __init__(self, size=224):
        self.transform = _view(blur_p=1.0, solarize_p=0.0, size=size)
        self.transform_prime = _view(blur_p=0.1, solarize_p=0.2, size=size)

    def __call__(self, img):
        return self.transform(img), self.transform_prime(img)


def load_image(path):
    """What torchvision's ImageFolder does per sample: full decode, then RGB."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")
