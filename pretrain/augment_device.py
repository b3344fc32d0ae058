"""The colour operations of the Barlow Twins views on a batch, on any device, as PIL computes them.

``apply_colour(views, colour)`` takes the loader's uint8 views (N x 3 x H x W, cropped, resized and
flipped) and their colour decisions (the batched ``pretrain.augment.colour_tensors``) and applies, per
sample, colour jitter in that sample's order, grayscale, Gaussian blur and solarisation. Each operation
restates the integer and float arithmetic of the Pillow routine the official pipeline calls (ImageEnhance
blends, RGB <-> HSV conversions, the ITU-R 601 luma, the extended box blur), so the result equals the PIL
pipeline's pixel for pixel (tests/test_pretrain_augment_device.py measures it; docs/PERFORMANCE.md gives
the figures).

The blur is PIL's ``GaussianBlur(sigma)``, i.e. three passes of an extended box filter per axis whose
variance is sigma^2 (Gwosdek et al. 2011), each pass rounded to 8 bits, with edge pixels repeated: not a
sampled Gaussian kernel. For sigma in [0.1, 2] its support is at most 2 pixels per pass, 6 in all.

The decisions arrive as CPU tensors (from the loader); which samples each operation touches, and the box
sizes of the blur, are worked out there, so the host never waits for the device (no synchronisation per step).
"""
import torch

from pretrain.augment import SOLARIZE_THRESHOLD

BLUR_PASSES = 3  # PIL's GaussianBlur: three box passes per axis


def _to(tensor, device):
    """A small host tensor onto ``device`` without making the host wait for the device's queue."""
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _per_sample(values, images):
    """(N,) host values -> (N, 1, 1, 1) on the images' device."""
    return _to(torch.as_tensor(values), images.device).view(-1, 1, 1, 1)


def _luma(images):
    """PIL's convert("L"): ITU-R 601-2 luma in 16-bit fixed point, (N, 1, H, W) int32."""
    r, g, b = images.to(torch.int32).unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).unsqueeze(1)


def _blend(degenerate, images, factor):
    """PIL's Image.blend(degenerate, images, factor): float32 arithmetic, truncated and clipped to 8 bits."""
    alpha = _per_sample(factor, images).float()  # the C routine takes alpha as a float
    base = degenerate.float()
    out = base + alpha * (images.to(torch.int32) - degenerate).float()
    return out.clamp_(0, 255).to(torch.uint8)  # clamping first, the cast truncates as C's does


def adjust_brightness(images, factor):
    """``F.adjust_brightness`` on PIL images (ImageEnhance.Brightness) for each sample's factor."""
    return _blend(torch.zeros((), dtype=torch.int32, device=images.device), images, factor)


def adjust_contrast(images, factor):
    """``F.adjust_contrast`` on PIL images: blend with the image's mean luma, rounded to an integer."""
    luma = _luma(images)
    pixels = luma[0].numel()
    total = luma.sum(dim=(1, 2, 3), keepdim=True, dtype=torch.int64)
    mean = (2 * total + pixels) // (2 * pixels)  # int(sum / pixels + 0.5), exactly
    return _blend(mean.to(torch.int32), images, factor)


def adjust_saturation(images, factor):
    """``F.adjust_saturation`` on PIL images (ImageEnhance.Color): blend with the luma of each pixel."""
    return _blend(_luma(images), images, factor)


def _rgb_to_hsv(images):
    """PIL's RGB -> HSV conversion (libImaging rgb2hsv_row): 8-bit H, S, V, as int32 (N, H, W).

    C's float and double steps are kept (a double sum of two floats, stored to a float, is not the float sum).
    """
    r, g, b = images.to(torch.int32).unbind(1)
    maxc = torch.maximum(r, torch.maximum(g, b))
    span = maxc - torch.minimum(r, torch.minimum(g, b))
    grey = span == 0
    # h = bc - gc, 2 + rc - bc or 4 + gc - rc, where xc = (maxc - x) / span, in double then stored to a float
    # (for bc - gc that is the float difference).
    red_max, green_max = r == maxc, g == maxc
    offset = torch.where(red_max, 0.0, torch.where(green_max, 2.0, 4.0)).double()
    plus = torch.where(red_max, b, torch.where(green_max, r, g))
    minus = torch.where(red_max, g, torch.where(green_max, b, r))
    span_f = span.float().clamp_(min=1)  # grey pixels (span 0) get h = s = 0 below
    hue = (offset + ((maxc - plus).float() / span_f).double() - ((maxc - minus).float() / span_f).double()).float()
    hue = torch.fmod(hue.double() / 6.0 + 1.0, 1.0).float()
    saturation = span.float() / maxc.float().clamp_(min=1)
    # C's CLIP8 keeps these as they are: h * 255 < 255 and s * 255 <= 255.
    h = torch.where(grey, 0, (hue.double() * 255.0).to(torch.int32))
    s = torch.where(grey, 0, (saturation.double() * 255.0).to(torch.int32))
    return h, s, maxc


def _round_half_away(values):
    """C's round() for values >= 0 (torch.round rounds halves to even)."""
    floor = values.floor()
    return floor + (values - floor >= 0.5)


# hsv2rgb's output per sector (floor(h * 6 / 255) mod 6) as indices into (v, p, q, t).
_SECTOR_CHANNELS = torch.tensor([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])


def _hsv_to_rgb(h, s, v):
    """PIL's HSV -> RGB conversion (libImaging hsv2rgb), mixing float and double as the C code does."""
    sector_pos = h.double() * 6.0 / 255.0
    sector = sector_pos.floor()
    f = (sector_pos - sector).float()
    fs = (s.double() / 255.0).float()
    vd, fsd = v.double(), fs.double()
    p = _round_half_away(vd * (1.0 - fsd))
    q = _round_half_away(vd * (1.0 - (fs * f).double()))  # fs * f: a float product in C
    t = _round_half_away(vd * (1.0 - fsd * (1.0 - f.double())))
    candidates = torch.stack([v, p.to(torch.int32), q.to(torch.int32), t.to(torch.int32)], dim=1)  # all in [0, v]
    table = _to(_SECTOR_CHANNELS, h.device)
    rgb = candidates.gather(1, table[sector.to(torch.int64) % 6].permute(0, 3, 1, 2))
    return torch.where((s == 0).unsqueeze(1), v.unsqueeze(1), rgb).to(torch.uint8)


def adjust_hue(images, factor):
    """``F.adjust_hue`` on PIL images: HSV conversion, hue shifted by int(factor * 255) modulo 256, back to RGB."""
    h, s, v = _rgb_to_hsv(images)
    shift = _per_sample((torch.as_tensor(factor, dtype=torch.float64) * 255).trunc().to(torch.int64) % 256, images)
    return _hsv_to_rgb((h.unsqueeze(1) + shift).squeeze(1) % 256, s, v)


def to_grayscale(images):
    """``F.rgb_to_grayscale(image, 3)`` on PIL images: the luma in all three channels."""
    return _luma(images).to(torch.uint8).expand_as(images).contiguous()


def solarize(images):
    """``ImageOps.solarize(image, 128)``: levels at or above the threshold inverted."""
    return torch.where(images >= SOLARIZE_THRESHOLD, 255 - images, images)


def box_blur_weights(sigma):
    """PIL's GaussianBlur(sigma) as box filters: per sample (radius, inner weight, edge weight), CPU int64.

    Restates libImaging's _gaussian_blur_radius and ImagingHorizontalBoxBlur in their float/double mix:
    a box of 2 * radius + 1 pixels of weight ``inner`` plus one pixel at each end of weight ``edge``,
    in units of 2^-24.
    """
    r = torch.as_tensor(sigma, dtype=torch.float64).cpu().float()  # Python's double parsed as a C float
    sigma2 = r * r / BLUR_PASSES
    length = torch.sqrt(12.0 * sigma2.double() + 1.0).float()
    whole = torch.floor((length.double() - 1.0) / 2.0).float()
    fraction = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2)
    fraction = fraction / (6 * (sigma2 - (whole + 1) * (whole + 1)))
    box_radius = whole + fraction
    inner = (torch.tensor(float(1 << 24)) / (box_radius * 2 + 1)).to(torch.int64)  # float division, truncated
    radius = box_radius.to(torch.int64)
    edge = ((1 << 24) - (radius * 2 + 1) * inner) // 2
    return radius, inner, edge


def _box_taps(sigma):
    """Per-sample weights of pixels 0, 1, ..., reach away from the centre in one box pass, each split at 2^12
    into (high, low) int32 parts, (reach + 1, N, 1, 1, 1); and reach."""
    radius, inner, edge = box_blur_weights(sigma)
    reach = int(radius.max()) + 1
    distance = torch.arange(reach + 1).unsqueeze(1)
    taps = torch.where(distance <= radius, inner, torch.where(distance == radius + 1, edge, 0))
    taps = taps.to(torch.int32).view(reach + 1, -1, 1, 1, 1)
    return taps >> 12, taps & 4095, reach


def _pad_repeating_edges(images, dim, reach):
    size = list(images.shape)
    size[dim] = reach
    first, last = images.narrow(dim, 0, 1), images.narrow(dim, images.shape[dim] - 1, 1)
    return torch.cat([first.expand(size), images, last.expand(size)], dim)  # index_select is far slower on CPU


def _box_pass(images, dim, taps_high, taps_low, reach):
    """One ImagingHorizontalBoxBlur pass along ``dim`` (edge pixels repeated), rounded to 8 bits as PIL does."""
    size = images.shape[dim]
    padded = _pad_repeating_edges(images, dim, reach).to(torch.int32)
    centre = padded.narrow(dim, reach, size)
    high, low = centre * taps_high[0], centre * taps_low[0]
    for distance in range(1, reach + 1):
        pair = padded.narrow(dim, reach - distance, size) + padded.narrow(dim, reach + distance, size)
        high += pair * taps_high[distance]
        low += pair * taps_low[distance]
    # PIL: (sum of weight x pixel + 2^23) >> 24 in 32 bits unsigned; the same from the two halves, in int32.
    return ((high + ((low + (1 << 23)) >> 12)) >> 12).to(torch.uint8)


def gaussian_blur(images, sigma):
    """``image.filter(ImageFilter.GaussianBlur(sigma))`` for each sample's sigma (a host tensor or sequence)."""
    taps_high, taps_low, reach = _box_taps(sigma)  # reach <= 2 for sigma <= 2 (the int32 sums allow ~1000)
    taps_high, taps_low = _to(taps_high, images.device), _to(taps_low, images.device)
    for dim in (3, 2):  # PIL: every horizontal pass, then every vertical one
        for _ in range(BLUR_PASSES):
            images = _box_pass(images, dim, taps_high, taps_low, reach)
    return images


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # ColorJitter's fn_id order


def colour_steps(colour):
    """The operations to run, in order, as (op, which samples (bool, N), per-sample factors or None).

    Jitter: at position k of the sampled permutation, op j runs on the samples whose order[k] is j.
    """
    steps = []
    for position in range(len(JITTER_OPS)):
        for op_id, op in enumerate(JITTER_OPS):
            chosen = colour["jitter"] & (colour["order"][:, position] == op_id)
            steps.append((op, chosen, colour["factors"][:, op_id]))
    steps += [(to_grayscale, colour["grayscale"], None), (gaussian_blur, colour["blur"], colour["blur_sigma"]),
              (solarize, colour["solarize"], None)]
    return steps


def apply_colour(images, colour):
    """uint8 views (N, 3, H, W) on any device and their colour decisions (dict of host tensors, batched
    ``colour_tensors``) -> the uint8 views after jitter, grayscale, blur and solarisation."""
    colour = {key: value.cpu() for key, value in colour.items()}  # a no-op for the loader's batches
    for op, chosen, factors in colour_steps(colour):
        samples = chosen.nonzero().squeeze(1)
        if len(samples) == 0:
            continue
        args = () if factors is None else (factors[samples],)
        if len(samples) == len(images):  # e.g. the first view's blur: no gather and scatter
            images = op(images, *args)
            continue
        on_device = _to(samples, images.device)
        images = images.index_copy(0, on_device, op(images.index_select(0, on_device), *args))
    return images
