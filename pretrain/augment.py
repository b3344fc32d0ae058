"""The two asymmetric Barlow Twins augmentation pipelines, one object returning both views.

Per view, with the official parameters (view 1 / view 2 where they differ):

    RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3), bicubic)
    horizontal flip                                  p 0.5
    ColorJitter(0.4, 0.4, 0.2, 0.1), random order    p 0.8
    grayscale                                        p 0.2
    Gaussian blur, sigma ~ U(0.1, 2.0)               p 1.0 / 0.1
    solarisation (threshold 128)                     p 0.0 / 0.2
    ImageNet mean/std normalisation

Every random decision of both views is drawn first (``sample_view_params``, torch's global generator, which
the caller seeds per sample), then applied: pixel-identical to the official pipeline for the same decisions.
Two options trade that for speed: ``jpeg_draft`` decodes a JPEG at reduced scale when both crops keep enough
pixels (close, not identical: recorded as a deviation), and ``colour_on_device`` leaves the colour operations
to ``pretrain.augment_device`` on the training device (identical).
"""
import functools
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms
from torchvision.transforms import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
JITTER_P, FLIP_P, GRAYSCALE_P = 0.8, 0.5, 0.2
BLUR_SIGMA = (0.1, 2.0)
SOLARIZE_THRESHOLD = 128


@dataclass(frozen=True)
class ViewPolicy:
    blur_p: float
    solarize_p: float


# The asymmetry of the paper: view 1 always blurred, never solarised; view 2 rarely blurred, sometimes solarised.
VIEW_POLICIES = (ViewPolicy(blur_p=1.0, solarize_p=0.0), ViewPolicy(blur_p=0.1, solarize_p=0.2))


@dataclass(frozen=True)
class ViewParams:
    """Every random decision for one view. ``crop`` is (top, left, height, width) in source pixels;
    ``jitter`` is (order, brightness, contrast, saturation, hue) or None."""
    crop: tuple
    flip: bool
    jitter: tuple | None
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


def _bernoulli(p):
    # Draw even when p is 0 or 1 so that both views consume the generator identically.
    return torch.rand(1).item() < p


_JITTER = transforms.ColorJitter(**JITTER)  # holds the ranges torchvision derives from JITTER


def sample_view_params(width, height, policy):
    """All random decisions of one view of a ``width`` x ``height`` image (torch's global generator)."""
    # torchvision's sampler reads only the size of its image: an empty C x H x W tensor stands in.
    crop = transforms.RandomResizedCrop.get_params(torch.empty(0, height, width), CROP_SCALE, CROP_RATIO)
    flip = _bernoulli(FLIP_P)
    jitter = None
    if _bernoulli(JITTER_P):
        order, *factors = transforms.ColorJitter.get_params(
            _JITTER.brightness, _JITTER.contrast, _JITTER.saturation, _JITTER.hue)
        jitter = (tuple(order.tolist()), *factors)
    grayscale = _bernoulli(GRAYSCALE_P)
    blur = _bernoulli(policy.blur_p)
    sigma = BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * torch.rand(1).item()
    solarize = _bernoulli(policy.solarize_p)
    return ViewParams(tuple(crop), flip, jitter, grayscale, sigma if blur else None, solarize)


def decode_for_crops(image, crops, size, draft=False):
    """Load ``image`` (a lazily opened PIL image) as RGB: at full size, or with ``draft`` at the smallest JPEG
    draft scale that keeps every crop at least ``size`` pixels per side. Returns (image, x scale, y scale)
    from source to loaded pixels."""
    width, height = image.size
    if draft:
        min_h = min(h for _, _, h, _ in crops)
        min_w = min(w for _, _, _, w in crops)
        # draft() picks the largest reduction whose result is at least the requested size: requesting
        # the image size scaled by size/crop keeps each crop >= size pixels. A no-op for non-JPEGs and
        # for images already loaded.
        image.draft("RGB", (-(-width * size // min_w), -(-height * size // min_h)))
    image.load()
    if image.mode != "RGB":  # grayscale or CMYK JPEGs, PNGs...; convert() of an RGB image would copy it
        image = image.convert("RGB")
    return image, image.size[0] / width, image.size[1] / height


def _apply_jitter(image, jitter):
    order, brightness, contrast, saturation, hue = jitter
    adjust = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    factors = (brightness, contrast, saturation, hue)
    for fn_id in order:
        if factors[fn_id] is not None:
            image = adjust[fn_id](image, factors[fn_id])
    return image


def render_geometry(image, params, scale_x, scale_y, size):
    """Crop, resize and flip of ``params`` on the decoded RGB ``image`` (scaled by scale_x, scale_y from the source)."""
    top, left, h, w = params.crop
    if scale_x == scale_y == 1.0:
        # Exactly torchvision's resized_crop: a resize with box= would also read pixels outside the crop.
        view = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
    else:  # decoded at reduced scale: the crop box has fractional corners, which only resize(box=) takes
        box = (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y)
        view = image.resize((size, size), Image.BICUBIC, box=box)
    if params.flip:
        view = view.transpose(Image.FLIP_LEFT_RIGHT)
    return view


def render_colour(view, params):
    """Colour jitter, grayscale, blur and solarisation of ``params`` on an RGB view, in the official order."""
    if params.jitter is not None:
        view = _apply_jitter(view, params.jitter)
    if params.grayscale:
        view = view.convert("L").convert("RGB")
    if params.blur_sigma is not None:
        view = view.filter(ImageFilter.GaussianBlur(params.blur_sigma))
    if params.solarize:
        view = ImageOps.solarize(view, SOLARIZE_THRESHOLD)
    return view


def render_view(image, params, scale_x, scale_y, size):
    """Apply ``params`` to the decoded RGB ``image`` (scaled by scale_x, scale_y from the source)."""
    return render_colour(render_geometry(image, params, scale_x, scale_y, size), params)


def colour_tensors(params):
    """The colour decisions of one view as tensors, for ``pretrain.augment_device.apply_colour``.

    float64 keeps every factor and sigma exactly the value the PIL pipeline would use. Without jitter, the
    order and factors are placeholders that ``jitter`` False makes unused; likewise ``blur_sigma``.
    """
    order, *factors = params.jitter if params.jitter is not None else ((0, 1, 2, 3), 1.0, 1.0, 1.0, 0.0)
    if any(factor is None for factor in factors):
        raise ValueError(f"colour_tensors needs all four jitter factors, got {params.jitter}")
    return {
        "jitter": torch.tensor(params.jitter is not None),
        "order": torch.tensor(order, dtype=torch.int64),
        "factors": torch.tensor(factors, dtype=torch.float64),  # brightness, contrast, saturation, hue
        "grayscale": torch.tensor(params.grayscale),
        "blur": torch.tensor(params.blur_sigma is not None),
        "blur_sigma": torch.tensor(params.blur_sigma or 0.0, dtype=torch.float64),
        "solarize": torch.tensor(params.solarize),
    }


def to_uint8_tensor(image):
    """HWC PIL image -> contiguous CHW uint8 tensor."""
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous()


_MEAN_255 = torch.tensor(IMAGENET_MEAN).view(-1, 1, 1) * 255
_INV_STD_255 = 1 / (torch.tensor(IMAGENET_STD).view(-1, 1, 1) * 255)


@functools.cache
def _normalisation_constants(device):
    # Made once per device: a copy per call would be a blocking host-to-device transfer at every step.
    return _MEAN_255.to(device), _INV_STD_255.to(device)


def normalize_batch(images):
    """uint8 images (..., 3, H, W) on any device -> float32 normalised with the ImageNet mean/std.

    Equal to ToTensor() then Normalize(mean, std): (x / 255 - mean) / std = (x - 255 mean) / (255 std).
    """
    mean, inv_std = _normalisation_constants(images.device)
    return (images.float() - mean) * inv_std


class TwoViews:
    """``TwoViews(size)(image) -> (view1, view2)``: CHW float32 normalised tensors, or uint8 with
    ``normalize=False`` (normalise on the accelerator with ``normalize_batch``).

    ``colour_on_device=True`` (uint8 only) -> ``(view1, view2, colour1, colour2)``: the views cropped,
    resized and flipped, and each view's ``colour_tensors``, for ``pretrain.augment_device.apply_colour``.
    The random decisions are drawn the same way in both modes, so a sample gets the same ones in each.

    ``jpeg_draft=True`` decodes a JPEG at reduced scale when both crops allow (see the module docstring);
    ``image`` must then be lazily opened (``PIL.Image.open`` without ``load``/``convert``), else it is
    decoded at full size.
    """

    def __init__(self, size=224, normalize=True, policies=VIEW_POLICIES, colour_on_device=False, jpeg_draft=False):
        if normalize and colour_on_device:
            raise ValueError("colour_on_device needs normalize=False: normalisation comes after the colour operations")
        self.size, self.normalize, self.policies, self.colour_on_device = size, normalize, policies, colour_on_device
        self.jpeg_draft = jpeg_draft

    def __call__(self, image):
        width, height = image.size
        params = [sample_view_params(width, height, policy) for policy in self.policies]
        decoded, scale_x, scale_y = decode_for_crops(image, [p.crop for p in params], self.size, self.jpeg_draft)
        if self.colour_on_device:
            views = [to_uint8_tensor(render_geometry(decoded, p, scale_x, scale_y, self.size)) for p in params]
            return (*views, *(colour_tensors(p) for p in params))
        views = [to_uint8_tensor(render_view(decoded, p, scale_x, scale_y, self.size)) for p in params]
        if self.normalize:
            views = [normalize_batch(v) for v in views]
        return tuple(views)
