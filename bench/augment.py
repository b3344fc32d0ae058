"""Input-pipeline benchmark: both Barlow Twins views from JPEG files at 224 px, per core, ours vs the official one.

Per core means one process with one torch thread, which is what one DataLoader worker is. The JPEGs are written
by the benchmark at ImageNet's typical size (500 x 375, quality 90) with natural-image-like content (smooth
colour fields plus grain), because decoding is a large share of the cost and depends on file size and entropy.
"""
import dataclasses
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import harness, reference

IMAGE_SIZE = (500, 375)
OUTPUT_SIZE = 224


def write_jpegs(folder, count, seed=0):
    """``count`` JPEG files that decode like ImageNet photos: low-frequency colour, edges, sensor-like grain."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(IMAGE_SIZE, Image.BICUBIC)
        grain = rng.normal(0, 12, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3))
        pixels = np.clip(np.asarray(coarse, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
        path = Path(folder) / f"{index:05d}.JPEG"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def suite_pipelines(size=OUTPUT_SIZE):
    """The suite's path -> (view1, view2), three ways:

    - "ours": normalised float views, the reference's contract;
    - "ours, uint8 out": what the training loader does (normalisation happens on the training device);
    - "ours, geometry only": decode, crop+resize and flip, with the same random draws but no colour jitter, grayscale,
      blur or solarisation: the CPU share that would be left if those ran on an accelerator in batch.
    """
    try:
        from pretrain import augment
    except ImportError as err:
        raise SystemExit(f"bench augment: cannot import pretrain.augment ({err})") from err
    floats, uint8 = augment.TwoViews(size), augment.TwoViews(size, normalize=False)

    def geometry_only(image):
        params = [dataclasses.replace(augment.sample_view_params(*image.size, policy), jitter=None, grayscale=False,
                                      blur_sigma=None, solarize=False) for policy in augment.VIEW_POLICIES]
        decoded, scale_x, scale_y = augment.decode_for_crops(image, [p.crop for p in params], size)
        return tuple(augment.to_uint8_tensor(augment.render_view(decoded, p, scale_x, scale_y, size)) for p in params)

    def from_file(transform):
        def pipeline(path):
            # Opened lazily, as the training dataset does: the suite decodes the JPEG itself, at reduced scale
            # when the crops allow.
            with Image.open(path) as image:
                return transform(image)
        return pipeline

    return {"ours": from_file(floats), "ours, uint8 out": from_file(uint8),
            "ours, geometry only": from_file(geometry_only)}


def reference_pipeline(size=OUTPUT_SIZE):
    transform = reference.ReferenceTransform(size)
    return lambda path: transform(reference.load_image(path))


def check_views(views, size, name):
    """Two 3 x size x size views: the same work as the reference, not a shortcut."""
    if len(views) != 2 or any(view.shape != (3, size, size) for view in views):
        raise SystemExit(f"bench augment: {name} produced views of shapes {[tuple(v.shape) for v in views]}; "
                         f"expected two of (3, {size}, {size})")


def run(images, reps, log):
    print(f"\n== augment: both views from {images} JPEG files ({IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}) at "
          f"{OUTPUT_SIZE} px, one process, one thread ==")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-jpeg-") as folder:
            paths = write_jpegs(folder, images)
            pipelines = {"reference": reference_pipeline(), **suite_pipelines()}
            for name, pipeline in pipelines.items():
                check_views(pipeline(paths[0]), OUTPUT_SIZE, name)

            def over_all_files(pipeline):
                def go():
                    for path in paths:
                        pipeline(path)
                return go

            random.seed(0)
            torch.manual_seed(0)
            timings = harness.time_side_by_side(
                {name: over_all_files(p) for name, p in pipelines.items()}, torch.device("cpu"), reps=reps, warmup=1)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for name, timing in timings.items():
        rate = images / timing.median
        rows.append([name, f"{rate:.1f}", f"{1e3 / rate:.1f}", f"{timing.spread:.2f}"])
        log.write(bench="augment", impl=name, images=images, seconds=timing.median, images_per_second=rate,
                  spread=timing.spread)
    print(harness.format_table(["impl", "img/s/core", "ms/img", "spread"], rows))
    speedups = [f"{name} {timings['reference'].median / timings[name].median:.2f}x" for name in timings
                if name != "reference"]
    print("RATIOS augment (images per second per core, ours/reference, same process): " + "; ".join(speedups))
