"""The two augmentation pipelines: outputs, per-view probabilities (statistically), the official pipeline's
pixels by default, and the opt-in reduced-scale decoding."""
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms
from torchvision.transforms import functional as F

from pretrain.augment import (
    IMAGENET_MEAN, IMAGENET_STD, VIEW_POLICIES, TwoViews, ViewParams, decode_for_crops, normalize_batch, render_view,
    sample_view_params, to_uint8_tensor,
)


@pytest.fixture(scope="module")
def jpeg_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    small = (rng.random((30, 40, 3)) * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("aug") / "photo.JPEG"
    Image.fromarray(small).resize((640, 480), Image.BICUBIC).save(path, quality=90)
    return path


def test_views_have_configured_shape_dtype_and_normalisation(jpeg_path):
    torch.manual_seed(0)
    v1, v2 = TwoViews(size=48)(Image.open(jpeg_path))
    assert v1.shape == v2.shape == (3, 48, 48) and v1.dtype == v2.dtype == torch.float32
    assert not torch.equal(v1, v2)
    u1, u2 = TwoViews(size=48, normalize=False)(Image.open(jpeg_path))
    assert u1.shape == (3, 48, 48) and u1.dtype == torch.uint8 and u1.is_contiguous()
    # normalize_batch == ToTensor + Normalize of the official pipeline.
    official = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(u1.float() / 255)
    torch.testing.assert_close(normalize_batch(u1), official, rtol=1e-5, atol=1e-5)


def test_per_view_probabilities_over_many_draws():
    torch.manual_seed(1)
    draws = 4000
    stats = {view: [sample_view_params(500, 375, policy) for _ in range(draws)]
             for view, policy in enumerate(VIEW_POLICIES)}
    tolerance = 4 * np.sqrt(0.25 / draws)  # 4 sigma of a Bernoulli mean at worst

    def rate(view, predicate):
        return np.mean([predicate(p) for p in stats[view]])

    for view, (blur_p, solarize_p) in enumerate([(1.0, 0.0), (0.1, 0.2)]):
        assert rate(view, lambda p: p.blur_sigma is not None) == pytest.approx(blur_p, abs=tolerance)
        assert rate(view, lambda p: p.solarize) == pytest.approx(solarize_p, abs=tolerance)
        assert rate(view, lambda p: p.flip) == pytest.approx(0.5, abs=tolerance)
        assert rate(view, lambda p: p.jitter is not None) == pytest.approx(0.8, abs=tolerance)
        assert rate(view, lambda p: p.grayscale) == pytest.approx(0.2, abs=tolerance)
    sigmas = np.array([p.blur_sigma for p in stats[0]])
    assert 0.1 <= sigmas.min() < 0.15 and 1.95 < sigmas.max() <= 2.0 and sigmas.mean() == pytest.approx(1.05, abs=0.05)
    jitters = np.array([p.jitter[1:] for p in stats[0] if p.jitter is not None])
    for column, (low, high) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        assert low <= jitters[:, column].min() < low + 0.01 and high - 0.01 < jitters[:, column].max() <= high
    areas = np.array([p.crop[2] * p.crop[3] for p in stats[0]]) / (500 * 375)
    assert 0.075 < areas.min() < 0.1 and areas.max() > 0.95


def test_solarisation_and_grayscale_render_as_specified(jpeg_path):
    image = Image.open(jpeg_path).convert("RGB")
    plain = ViewParams(crop=(0, 0, 480, 640), flip=False, jitter=None, grayscale=False, blur_sigma=None, solarize=False)

    def render(**change):
        return to_uint8_tensor(render_view(image, replace(plain, **change), 1.0, 1.0, 32))

    base = render()
    torch.testing.assert_close(render(solarize=True), torch.where(base >= 128, 255 - base, base))
    gray = render(grayscale=True)
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    flipped = render(flip=True)
    assert torch.equal(flipped, base.flip(-1))


def official_view(image, params, size):
    """The official pipeline's operations, in its order, applied with the given random decisions."""
    top, left, h, w = params.crop
    view = F.resized_crop(image, top, left, h, w, [size, size], transforms.InterpolationMode.BICUBIC)
    if params.flip:
        view = F.hflip(view)
    if params.jitter is not None:
        order, *factors = params.jitter
        ops = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
        for fn_id in order:
            view = ops[fn_id](view, factors[fn_id])
    if params.grayscale:
        view = F.rgb_to_grayscale(view, num_output_channels=3)
    if params.blur_sigma is not None:
        view = view.filter(ImageFilter.GaussianBlur(params.blur_sigma))
    if params.solarize:
        view = ImageOps.solarize(view)
    return transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)(F.to_tensor(view))


def test_views_equal_the_official_operations_for_the_same_random_decisions(jpeg_path):
    # A loaded image cannot be decoded at reduced scale, so both paths see the same pixels.
    image = Image.open(jpeg_path).convert("RGB").resize((120, 90))
    torch.manual_seed(2)
    for policy in VIEW_POLICIES * 15:
        params = sample_view_params(120, 90, policy)
        ours = normalize_batch(to_uint8_tensor(render_view(image, params, 1.0, 1.0, 32)))
        torch.testing.assert_close(ours, official_view(image, params, 32), rtol=0, atol=1e-5)


def test_views_of_a_lazily_opened_jpeg_are_the_official_pipelines_by_default(jpeg_path):
    """A 640x480 JPEG at 32 px: the crops would allow a reduced-scale decode, which only jpeg_draft=True makes."""
    full = Image.open(jpeg_path).convert("RGB")
    for seed in range(4):
        torch.manual_seed(seed)
        views = TwoViews(size=32)(Image.open(jpeg_path))
        torch.manual_seed(seed)
        params = [sample_view_params(640, 480, policy) for policy in VIEW_POLICIES]
        for view, p in zip(views, params, strict=True):
            torch.testing.assert_close(view, official_view(full, p, 32), rtol=0, atol=1e-5)
        torch.manual_seed(seed)
        drafted = TwoViews(size=32, jpeg_draft=True)(Image.open(jpeg_path))
        assert not torch.equal(drafted[0], views[0])


def test_draft_decoding_keeps_every_crop_at_least_output_size(jpeg_path):
    # Two large crops of a 640x480 JPEG allow a 1/2 reduction for a 200 px output...
    crops = [(0, 0, 480, 640), (10, 20, 400, 600)]
    image, sx, sy = decode_for_crops(Image.open(jpeg_path), crops, 200, draft=True)
    assert image.size == (320, 240) and (sx, sy) == (0.5, 0.5) and image.mode == "RGB"
    # ...but one small crop keeps the full resolution, and so does decoding without draft.
    image, sx, sy = decode_for_crops(Image.open(jpeg_path), [(0, 0, 480, 640), (0, 0, 250, 250)], 200, draft=True)
    assert image.size == (640, 480) and (sx, sy) == (1.0, 1.0)
    image, sx, sy = decode_for_crops(Image.open(jpeg_path), crops, 200)
    assert image.size == (640, 480) and (sx, sy) == (1.0, 1.0)


def test_reduced_scale_decode_gives_nearly_the_same_view(jpeg_path):
    params = ViewParams(crop=(10, 20, 400, 600), flip=False, jitter=None, grayscale=False, blur_sigma=None,
                        solarize=False)
    reduced, sx, sy = decode_for_crops(Image.open(jpeg_path), [params.crop], 200, draft=True)
    assert sx == sy == 0.5
    fast = to_uint8_tensor(render_view(reduced, params, sx, sy, 200)).float()
    full = to_uint8_tensor(render_view(Image.open(jpeg_path).convert("RGB"), params, 1.0, 1.0, 200)).float()
    assert (fast - full).abs().mean() < 2.0  # grey levels out of 255
