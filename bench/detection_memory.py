"""Memory of one R50-C4 training step at the detection protocol's sizes, per image:
``python -m bench.detection_memory [--tasks voc coco] [--images 1 2] [--height 800 --width 1067]``.

Each protocol config is built as one process trains it (plain BN, 512 ROIs per image, RPN top-k 12000 / 2000)
and the peak of live tensor memory is measured during forward + backward for 1 and 2 images of one size (default
800 x 1067: the protocol's largest short side on a 4:3 photo, the typical VOC and COCO shape). The difference is
what each more image costs; the rest is what a step needs whatever its batch. CPU: torch.profiler's memory events
(tensors only); CUDA: the caching allocator's peak. On a GPU, the CUDA context, cuDNN workspaces and the
allocator's slack come on top, and so do the weights and SGD momentum (``model MiB`` each, not in the peak).
Results: a table, and ``<out>/detection_memory.jsonl``.
"""
import argparse
import os
import time
from pathlib import Path

# Kineto (torch.profiler) reports a missing GPU as an ERROR line at start-up; it is expected on CPU.
os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402

from bench import harness  # noqa: E402
from bt_transfer.core.progress import MetricsLog  # noqa: E402

GIB = 2**30


def training_inputs(count, height, width, masks, boxes=4, seed=0):
    """``count`` Detectron2 training inputs of one size, each with ``boxes`` ground-truth boxes (and masks)."""
    from detectron2.structures import Boxes, Instances, PolygonMasks

    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(count):
        corner = torch.rand(boxes, 2, generator=generator) * torch.tensor([width, height]) * 0.6
        size = (0.1 + 0.3 * torch.rand(boxes, 2, generator=generator)) * torch.tensor([width, height])
        xyxy = torch.cat([corner, corner + size], dim=1)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(xyxy)
        instances.gt_classes = torch.randint(0, 20, (boxes,), generator=generator)
        if masks:
            instances.gt_masks = PolygonMasks([[[x0, y0, x1, y0, x1, y1, x0, y1]] for x0, y0, x1, y1 in xyxy.tolist()])
        image = torch.randint(0, 256, (3, height, width), generator=generator).float()
        inputs.append({"image": image, "instances": instances})
    return inputs


def measure(task, images, height, width, device):
    """Peak bytes of one forward + backward for each image count, and the model's parameter bytes."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    import bt_transfer.detection.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
    from bt_transfer.detection.protocol import resolve_task

    cfg = resolve_task(task, 1, cpu=device.type == "cpu").cfg
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    inputs = training_inputs(max(images), height, width, masks=cfg.MODEL.MASK_ON)
    peaks = {}
    with EventStorage(0):
        for count in images:
            model.zero_grad(set_to_none=True)  # the gradients are part of the step's peak
            start = time.perf_counter()
            peaks[count] = harness.peak_memory_increase(
                lambda: sum(model(inputs[:count]).values()).backward(), device)
            print(f"  {task}: {count} image(s) measured in {time.perf_counter() - start:.0f} s", flush=True)
    return peaks, parameters


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.detection_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=("voc", "coco"), default=["voc", "coco"])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 2], help="image counts (at least two)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1067)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for the JSON-lines records")
    args = parser.parse_args(argv)
    if len(set(args.images)) < 2:
        parser.error("--images needs two counts or more: the memory per image is their difference")
    device = torch.device(args.device)
    print(harness.format_machine(harness.machine_info(device)))
    rows = []
    with MetricsLog(args.out / "detection_memory.jsonl") as log:
        for task in args.tasks:
            peaks, parameters = measure(task, sorted(set(args.images)), args.height, args.width, device)
            (low, low_peak), (high, high_peak) = min(peaks.items()), max(peaks.items())
            per_image = (high_peak - low_peak) / (high - low)
            fixed = low_peak - low * per_image
            for count, peak in peaks.items():
                rows.append([task, f"{args.height}x{args.width}", count, f"{peak / GIB:.2f}",
                             f"{per_image / GIB:.2f}", f"{fixed / GIB:.2f}", f"{parameters / 2**20:.0f}"])
            log.write(bench="detection-memory", task=task, height=args.height, width=args.width, device=str(device),
                      peak_bytes={str(k): v for k, v in peaks.items()}, per_image_bytes=per_image,
                      fixed_bytes=fixed, parameter_bytes=parameters)
    print(harness.format_table(["task", "image", "images", "peak GiB", "per image GiB", "fixed GiB", "model MiB"],
                               rows))


if __name__ == "__main__":
    main()
