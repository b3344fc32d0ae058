"""Colour operations on the device (pretrain.augment_device) against the PIL operations of the official pipeline,
and what stays on the device (no per-step host tensors there, normalisation constants included).

Measured tolerance: none. For the same parameters every batched operation gives the PIL result bit for bit
(max abs difference 0 of 255, mean 0), here on varied images over the official ranges, and, for the hue (the only
operation with float rounding in a colour-space round trip), over the whole 2^24-colour RGB cube at 9 shifts
between -0.1 and 0.1 (checked once; the test below samples the cube).
"""
import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import default_collate
from torchvision.transforms import functional as F

from pretrain import augment_device as device_ops
from pretrain.augment import (
    VIEW_POLICIES, TwoViews, ViewParams, colour_tensors, normalize_batch, render_colour, sample_view_params,
    to_uint8_tensor,
)
from pretrain.data import ResumableSampler, TwoViewDataset, make_loader
from pretrain.images import sample_generator
from pretrain.train import resolve_augment


def varied_images(count, height=24, width=28, seed=0):
    """uint8 HWC arrays with smooth colour, grain of three strengths, grey patches and clipped highlights."""
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8))
        coarse = coarse.resize((width, height), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.float64) + rng.normal(0, 20 * (index % 3), (height, width, 3))
        pixels[: height // 4] = pixels[: height // 4].mean(axis=-1, keepdims=True)  # grey: hue and saturation 0
        pixels[-2:] *= 1.5
        images.append(np.clip(pixels, 0, 255).astype(np.uint8))
    return images


def as_batch(images):
    return torch.stack([torch.from_numpy(image).permute(2, 0, 1) for image in images]).contiguous()


def pil_batch(images, operation, factors=None):
    """The PIL ``operation`` on each image (with that image's factor, if any), as a uint8 batch."""
    arguments = [()] * len(images) if factors is None else [(float(factor),) for factor in factors]
    return torch.stack([to_uint8_tensor(operation(Image.fromarray(image), *args))
                        for image, args in zip(images, arguments, strict=True)])


def assert_same_pixels(ours, reference):
    difference = (ours.int() - reference.int()).abs()
    assert ours.dtype == torch.uint8 and ours.shape == reference.shape
    assert difference.max().item() == 0, (
        f"max abs difference {difference.max().item()} of 255, mean {difference.float().mean().item():.3g}, "
        f"{(difference > 0).float().mean().item():.2%} of values differ")


IMAGES = varied_images(12)
# Each factor range includes its ends: the extrapolating blends (factor > 1) clip, the others do not.
JITTER_CASES = {
    "brightness": (device_ops.adjust_brightness, F.adjust_brightness, (0.6, 1.4)),
    "contrast": (device_ops.adjust_contrast, F.adjust_contrast, (0.6, 1.4)),
    "saturation": (device_ops.adjust_saturation, F.adjust_saturation, (0.8, 1.2)),
    "hue": (device_ops.adjust_hue, F.adjust_hue, (-0.1, 0.1)),
}


@pytest.mark.parametrize("name", JITTER_CASES)
def test_each_jitter_operation_equals_pil_for_each_samples_factor(name):
    ours, official, (low, high) = JITTER_CASES[name]
    factors = torch.linspace(low, high, len(IMAGES), dtype=torch.float64)
    factors[len(IMAGES) // 2] = 1.0 if name != "hue" else 0.0
    assert_same_pixels(ours(as_batch(IMAGES), factors), pil_batch(IMAGES, official, factors))


def test_hue_equals_pil_across_the_rgb_cube():
    levels = torch.tensor([0, 1, 2, 3, 7, 64, 127, 128, 129, 200, 251, 252, 253, 254, 255] + list(range(5, 250, 9)))
    cube = torch.cartesian_prod(levels, levels, levels).to(torch.uint8)  # 39^3 colours, edges of the cube included
    image = cube.T.reshape(3, len(levels), -1).numpy().transpose(1, 2, 0).copy()
    shifts = torch.tensor([-0.1, -0.0999, -0.05, -0.002, 0.002, 0.0999, 0.1], dtype=torch.float64)
    batch = as_batch([image] * len(shifts))
    assert_same_pixels(device_ops.adjust_hue(batch, shifts), pil_batch([image] * len(shifts), F.adjust_hue, shifts))


def test_grayscale_and_solarisation_equal_pil():
    assert_same_pixels(device_ops.to_grayscale(as_batch(IMAGES)),
                       pil_batch(IMAGES, lambda image: F.rgb_to_grayscale(image, num_output_channels=3)))
    assert_same_pixels(device_ops.solarize(as_batch(IMAGES)), pil_batch(IMAGES, lambda image: ImageOps.solarize(image)))


def test_blur_equals_pils_box_approximation_which_is_not_a_sampled_gaussian():
    draws = torch.rand(len(IMAGES) - 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigmas = torch.cat([torch.tensor([0.1, 2.0], dtype=torch.float64), 0.1 + 1.9 * draws])
    blurred = device_ops.gaussian_blur(as_batch(IMAGES), sigmas)
    assert_same_pixels(blurred, pil_batch(IMAGES, lambda image, s: image.filter(ImageFilter.GaussianBlur(s)), sigmas))

    # PIL's radius is the standard deviation: three passes of the extended box have variance sigma^2...
    radius, inner, edge = device_ops.box_blur_weights(sigmas)
    for s, r, w_inner, w_edge in zip(sigmas.tolist(), radius.tolist(), inner.tolist(), edge.tolist()):
        weights = {offset: w_inner for offset in range(-r, r + 1)} | {-r - 1: w_edge, r + 1: w_edge}
        assert sum(weights.values()) == pytest.approx(1 << 24, abs=2)
        variance = sum(o * o * w for o, w in weights.items()) / (1 << 24)
        assert device_ops.BLUR_PASSES * variance == pytest.approx(s * s, rel=1e-5)
    # ...but the kernel is piecewise polynomial and each pass is rounded, so a sampled Gaussian of the same sigma
    # (torchvision's tensor blur, 3-sigma kernel, reflected edges) differs: up to 7 levels of 255 at sigma 1 on
    # 224 px photo-like images, 0.2-0.6 on average for sigma 0.5-2 (docs/PERFORMANCE.md).
    sigma = 1.0
    true_gaussian = torch.stack([F.gaussian_blur(image, [7, 7], [sigma, sigma]) for image in as_batch(IMAGES)])
    pil_blur = device_ops.gaussian_blur(as_batch(IMAGES), torch.full((len(IMAGES),), sigma, dtype=torch.float64))
    difference = (true_gaussian.int() - pil_blur.int()).abs().float()
    assert difference.max() >= 2 and 0.1 < difference.mean() < 1.5


def test_jitter_runs_in_each_samples_sampled_order():
    orders = list(itertools.permutations(range(4)))  # all 24, one per sample
    image = varied_images(1, seed=3)[0]
    factors = (1.35, 0.65, 1.15, 0.08)
    params = [ViewParams(crop=None, flip=False, jitter=(order, *factors), grayscale=False, blur_sigma=None,
                         solarize=False) for order in orders]
    colour = default_collate([colour_tensors(p) for p in params])
    ours = device_ops.apply_colour(as_batch([image] * len(orders)), colour)
    official = torch.stack([to_uint8_tensor(render_colour(Image.fromarray(image), p)) for p in params])
    assert_same_pixels(ours, official)
    # The order matters for these factors, so the agreement above is about the order and not only the factors.
    assert len({view.numpy().tobytes() for view in ours}) >= 20


def sampled_params(count, seed):
    torch.manual_seed(seed)
    return [sample_view_params(500, 375, policy) for _ in range(count) for policy in VIEW_POLICIES]


def test_apply_colour_equals_the_pil_colour_pipeline_for_sampled_decisions():
    params = sampled_params(24, seed=4)
    images = varied_images(len(params), seed=5)
    ours = device_ops.apply_colour(as_batch(images), default_collate([colour_tensors(p) for p in params]))
    official = torch.stack([to_uint8_tensor(render_colour(Image.fromarray(image), p))
                            for image, p in zip(images, params)])
    assert_same_pixels(ours, official)


def test_colour_parameter_distributions_are_the_official_ones():
    draws = 3000
    colour = {view: default_collate([colour_tensors(p) for p in sampled_params(draws, seed=6)[view::2]])
              for view in range(2)}
    tolerance = 4 * math.sqrt(0.25 / draws)  # 4 sigma of a Bernoulli mean at worst
    for view, (blur_p, solarize_p) in enumerate([(1.0, 0.0), (0.1, 0.2)]):
        c = colour[view]
        for key, p in (("jitter", 0.8), ("grayscale", 0.2), ("blur", blur_p), ("solarize", solarize_p)):
            assert c[key].dtype == torch.bool and c[key].double().mean().item() == pytest.approx(p, abs=tolerance)
        sigma = c["blur_sigma"][c["blur"]]
        assert 0.1 <= sigma.min() < 0.2 and 1.9 < sigma.max() <= 2.0
        jittered = c["factors"][c["jitter"]]
        for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
            assert low <= jittered[:, column].min() < low + 0.01 and high - 0.01 < jittered[:, column].max() <= high
            assert jittered[:, column].mean().item() == pytest.approx((low + high) / 2, abs=(high - low) * 0.03)
        # ColorJitter's order: a uniform random permutation (each op at each position a quarter of the time).
        orders = c["order"][c["jitter"]]
        assert torch.equal(orders.sort(dim=1).values, torch.arange(4).expand_as(orders))
        at_position = torch.stack([(orders == op).double().mean(dim=0) for op in range(4)])
        assert torch.allclose(at_position, torch.full((4, 4), 0.25, dtype=torch.float64), atol=tolerance)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("colour") / "train"
    for cls, images in (("a", varied_images(3, 60, 80, seed=7)), ("b", varied_images(3, 70, 50, seed=8))):
        (root / cls).mkdir(parents=True)
        for index, image in enumerate(images):
            Image.fromarray(image).save(root / cls / f"{index}.JPEG", quality=90)
    return root


def test_a_sample_gets_the_same_decisions_and_pixels_in_cpu_and_device_modes(photo_folder):
    cpu = TwoViewDataset(photo_folder, TwoViews(24, normalize=False), seed=9)
    device = TwoViewDataset(photo_folder, TwoViews(24, normalize=False, colour_on_device=True), seed=9)
    for key in [(0, 0), (0, 4), (3, 5)]:
        with sample_generator(9, *key), Image.open(cpu.paths[key[1]]) as image:
            drawn = [sample_view_params(*image.size, policy) for policy in VIEW_POLICIES]
        *_, colour1, colour2 = device[key]
        for colour, params in zip((colour1, colour2), drawn):
            assert colour.keys() == colour_tensors(params).keys()
            assert all(torch.equal(colour[k], v) for k, v in colour_tensors(params).items())

    # Through the loader (collation included): the device mode's views end equal to the CPU mode's.
    def batches(dataset):
        sampler = ResumableSampler(len(dataset), 3, seed=9)
        return list(make_loader(dataset, sampler, workers=0, pin_memory=False))

    for cpu_batch, device_batch in zip(batches(cpu), batches(device), strict=True):
        views, colours = device_batch[:2], device_batch[2:]
        for cpu_view, view, colour in zip(cpu_batch, views, colours, strict=True):
            assert_same_pixels(device_ops.apply_colour(view, colour), cpu_view)


def test_augment_choice():
    assert resolve_augment("auto", torch.device("cpu")) == "cpu"
    assert resolve_augment("auto", torch.device("cuda", 0)) == "device"
    assert resolve_augment("device", torch.device("cpu")) == "device"
    assert resolve_augment("cpu", torch.device("cuda", 0)) == "cpu"
    with pytest.raises(ValueError, match="normalize=False"):
        TwoViews(16, colour_on_device=True)


class DevicesSeen(TorchDispatchMode):
    """Records (operation, devices of its tensor arguments, devices of its results) for every operation."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.add((func.name(), devices_of((args, kwargs)), devices_of(out)))
        return out


def devices_of(tree):
    return tuple(sorted({str(leaf.device) for leaf in torch.utils._pytree.tree_leaves(tree)
                         if isinstance(leaf, torch.Tensor)}))


# The meta device stands in for an accelerator: on the CPU device itself ``.to`` is a no-op and would show nothing.
META = torch.device("meta")


def test_apply_colour_computes_on_the_views_device_with_only_small_host_copies():
    params = sampled_params(16, seed=10)
    colour = default_collate([colour_tensors(p) for p in params])
    with DevicesSeen() as seen:
        out = device_ops.apply_colour(torch.zeros(len(params), 3, 8, 8, dtype=torch.uint8, device=META), colour)
    assert out.device == META and out.shape == (len(params), 3, 8, 8) and out.dtype == torch.uint8
    # Every operation on the device reads device tensors only; host values (factors, sample indices, box weights,
    # the HSV sector table) reach it as copies.
    assert {name for name, inputs, outputs in seen.ops if "meta" in outputs and "cpu" in inputs} == {"aten::_to_copy"}


def test_normalisation_constants_are_made_once_per_device_not_per_call():
    """No host-to-device copy per step: after the first call on a device, normalize_batch reads no host tensor."""
    images = torch.zeros(2, 3, 4, 4, dtype=torch.uint8, device=META)
    with DevicesSeen() as first:
        normalize_batch(images)
    with DevicesSeen() as later:
        for _ in range(3):
            assert normalize_batch(images).device == META
    assert ("aten::_to_copy", ("cpu",), ("meta",)) in first.ops  # the constants, copied over once
    assert later.ops and all(inputs == outputs == ("meta",) for _, inputs, outputs in later.ops), sorted(later.ops)
