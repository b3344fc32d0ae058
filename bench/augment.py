"""Input-pipeline benchmark: both Barlow Twins views from JPEG files at 224 px, per core, ours vs the official one.

Per core means one process with one torch thread, which is what one DataLoader worker is. The JPEGs are written
by the benchmark at ImageNet's typical size (500 x 375, quality 90) with natural-image-like content (smooth
colour fields plus grain), because decoding is a large share of the cost and depends on file size and entropy.

Then the other half of ``--augment device``: the batched colour operations (``pretrain.augment_device``) on the
loader's batch of those views, per image pair, on the CPU with one thread, and on CUDA when there is one.
"""
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

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


COLOUR_ON_DEVICE = "ours, colour on the device (loader's share)"


def suite_pipelines(size=OUTPUT_SIZE):
    """The suite's path -> (view1, view2, ...), three ways:

    - "ours": normalised float views, the reference's contract;
    - "ours, uint8 out": what the training loader does with --augment cpu (normalisation on the training device);
    - COLOUR_ON_DEVICE: what it does with --augment device: decode, crop+resize and flip, and each view's colour
      decisions as tensors (the same random draws); jitter, grayscale, blur and solarisation run on the batch.
    """
    try:
        from pretrain import augment
    except ImportError as err:
        raise SystemExit(f"bench augment: cannot import pretrain.augment ({err})") from err
    floats, uint8 = augment.TwoViews(size), augment.TwoViews(size, normalize=False)
    geometry = augment.TwoViews(size, normalize=False, colour_on_device=True)

    def from_file(transform):
        def pipeline(path):
            # Opened lazily, as the training dataset does (the default: full-size decoding, as the reference;
            # --jpeg-draft would decode at reduced scale where the crops allow, never at this image size).
            with Image.open(path) as image:
                return transform(image)
        return pipeline

    return {"ours": from_file(floats), "ours, uint8 out": from_file(uint8), COLOUR_ON_DEVICE: from_file(geometry)}


def reference_pipeline(size=OUTPUT_SIZE):
    transform = reference.ReferenceTransform(size)
    return lambda path: transform(reference.load_image(path))


def check_views(outputs, size, name):
    """Two 3 x size x size views (then, colour on the device, their two colour decisions): the same work as the
    reference, not a shortcut."""
    views = outputs[:2]
    if len(outputs) != (4 if name == COLOUR_ON_DEVICE else 2) or any(view.shape != (3, size, size) for view in views):
        raise SystemExit(f"bench augment: {name} produced {len(outputs)} outputs, views of shapes "
                         f"{[tuple(v.shape) for v in views]}; expected two views of (3, {size}, {size})")


def time_colour_on_batch(batch, reps, log):
    """Time per image pair of ``apply_colour`` on both views of the loader's ``batch``, per device available."""
    from pretrain.augment_device import apply_colour

    views, colours = batch[:2], batch[2:]
    pairs = len(views[0])
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        on_device = [view.to(device) for view in views]

        def both_views():
            for view, colour in zip(on_device, colours):
                apply_colour(view, colour)

        timing = harness.time_side_by_side({"apply_colour": both_views}, device, reps=reps, warmup=1)["apply_colour"]
        label = "cpu, one thread" if device.type == "cpu" else torch.cuda.get_device_name(device)
        rows.append([label, f"{1e3 * timing.median / pairs:.2f}", f"{timing.spread:.2f}"])
        log.write(bench="augment", impl="apply_colour", device=str(device), pairs=pairs, seconds=timing.median,
                  ms_per_pair=1e3 * timing.median / pairs, spread=timing.spread)
    return rows


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
            batch = default_collate([pipelines[COLOUR_ON_DEVICE](path) for path in paths])
            colour_rows = time_colour_on_batch(batch, reps, log)
    finally:
        torch.set_num_threads(threads)
    rows = []
    for name, timing in timings.items():
        rate = images / timing.median
        rows.append([name, f"{rate:.1f}", f"{1e3 / rate:.1f}", f"{timing.spread:.2f}"])
        log.write(bench="augment", impl=name, images=images, seconds=timing.median, images_per_second=rate,
                  spread=timing.spread)
    print(harness.format_table(["impl", "img/s/core", "ms/img", "spread"], rows))
    pil_colour = (timings["ours, uint8 out"].median - timings[COLOUR_ON_DEVICE].median) / images
    print(f"\nColour operations on the loader's batch of {images} pairs (pretrain.augment_device.apply_colour, both "
          f"views); the same operations in PIL cost {1e3 * pil_colour:.2f} ms per pair in the loader (uint8 out minus "
          "the loader's share):")
    print(harness.format_table(["device", "ms/pair", "spread"], colour_rows))
    speedups = [f"{name} {timings['reference'].median / timings[name].median:.2f}x" for name in timings
                if name != "reference"]
    print("RATIOS augment (images per second per core, ours/reference, same process): " + "; ".join(speedups))
