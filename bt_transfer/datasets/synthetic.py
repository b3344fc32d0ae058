"""Small generated datasets in the real ImageNet, Pascal VOC and COCO layouts.

Every class is a distinct shape drawn in its own hue and texture, at a random scale,
position and rotation over a noisy, smoothly varying background, so a linear probe or a
short Faster/Mask R-CNN run beats chance measurably while the files stay tiny.

``generate(out)`` writes (default sizes in brackets)::

    out/imagenet/{train,val}/<synset>/<synset>_<index>.JPEG   10 classes [26 train, 10 val each]
    out/imagenet/synsets.txt                                   "<synset> <shape name>" per class
    out/VOC2007/{JPEGImages,Annotations,ImageSets/Main}/       trainval [60], test [30], 20 VOC classes
    out/VOC2012/{JPEGImages,Annotations,ImageSets/Main}/       trainval [60]
    out/coco/{train2017,val2017}/, annotations/instances_{train,val}2017.json  [60, 30]
                                                               (every 5th a close-up on a 2x canvas)
    out/synthetic.json                                         what was generated (seed, size, counts)

The tree is built in a hidden sibling folder and renamed into place, so an interrupted
run never leaves an ``out`` that looks complete. Generation is deterministic: one seed
gives byte-identical files with a given Pillow build (each dataset draws from its own
seeded stream).
"""
import argparse
import colorsys
import json
import math
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from bt_transfer.core.fileio import write_json
from bt_transfer.datasets.facts import GENERATED_MANIFEST

FORMAT_VERSION = 2  # 2: COCO close-ups, so every COCO area range has ground truth
MANIFEST = GENERATED_MANIFEST

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

# The 80 COCO "thing" categories with their real (non-contiguous) ids: Detectron2's builtin
# coco_2017_* metadata maps exactly these ids, so a json with other categories is refused.
COCO_CATEGORIES = tuple(
    {"id": int(cid), "name": name.replace("_", " "), "supercategory": sup}
    for sup, entries in (
        ("person", "1:person"),
        ("vehicle", "2:bicycle 3:car 4:motorcycle 5:airplane 6:bus 7:train 8:truck 9:boat"),
        ("outdoor", "10:traffic_light 11:fire_hydrant 13:stop_sign 14:parking_meter 15:bench"),
        ("animal", "16:bird 17:cat 18:dog 19:horse 20:sheep 21:cow 22:elephant 23:bear "
                   "24:zebra 25:giraffe"),
        ("accessory", "27:backpack 28:umbrella 31:handbag 32:tie 33:suitcase"),
        ("sports", "34:frisbee 35:skis 36:snowboard 37:sports_ball 38:kite 39:baseball_bat "
                   "40:baseball_glove 41:skateboard 42:surfboard 43:tennis_racket"),
        ("kitchen", "44:bottle 46:wine_glass 47:cup 48:fork 49:knife 50:spoon 51:bowl"),
        ("food", "52:banana 53:apple 54:sandwich 55:orange 56:broccoli 57:carrot 58:hot_dog "
                 "59:pizza 60:donut 61:cake"),
        ("furniture", "62:chair 63:couch 64:potted_plant 65:bed 67:dining_table 70:toilet"),
        ("electronic", "72:tv 73:laptop 74:mouse 75:remote 76:keyboard 77:cell_phone"),
        ("appliance", "78:microwave 79:oven 80:toaster 81:sink 82:refrigerator"),
        ("indoor", "84:book 85:clock 86:vase 87:scissors 88:teddy_bear 89:hair_drier "
                   "90:toothbrush"),
    )
    for cid, name in (entry.split(":") for entry in entries.split())
)
# Objects are drawn from a handful of the 80 categories (ids above).
COCO_USED_IDS = (1, 3, 17, 18, 44, 62)

# Images per split.
IMAGENET_CLASSES = 10
IMAGENET_PER_CLASS = {"train": 26, "val": 10}
VOC_SPLITS = {"VOC2007": {"trainval": 60, "test": 30}, "VOC2012": {"trainval": 60}}
COCO_SPLITS = {"train2017": 60, "val2017": 30}
CLOSEUP_EVERY = 5


def _regular(n, phase=-math.pi / 2, rx=1.0, ry=1.0):
    return [(rx * math.cos(phase + 2 * math.pi * k / n), ry * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star(points=5, inner=0.45):
    return [(r * math.cos(-math.pi / 2 + math.pi * k / points), r * math.sin(-math.pi / 2 + math.pi * k / points))
            for k, r in zip(range(2 * points), [1.0, inner] * points)]


# Unit polygons in [-1, 1]^2; concave ones are fine for PIL and for COCO polygons.
SHAPES = {
    "circle": _regular(32),
    "triangle": _regular(3),
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "hexagon": _regular(6, phase=0.0),
    "star": _star(),
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "ell": [(-0.8, -1), (-0.2, -1), (-0.2, 0.4), (0.8, 0.4), (0.8, 1), (-0.8, 1)],
    "arrow": [(-1, -0.3), (0.2, -0.3), (0.2, -0.8), (1, 0), (0.2, 0.8), (0.2, 0.3), (-1, 0.3)],
    "chevron": [(-1, -0.9), (0, 0.1), (1, -0.9), (1, -0.1), (0, 0.9), (-1, -0.1)],
    "ellipse": _regular(32, rx=1.0, ry=0.5),
}
SHAPE_NAMES = tuple(SHAPES)
TEXTURES = ("solid", "stripes", "checker")


def _style(index, count, shape, texture):
    """One class's look: a shape, a texture and a hue spread evenly around the colour wheel."""
    return {"shape": shape, "texture": texture, "hue": index / count}


IMAGENET_STYLES = tuple(_style(i, IMAGENET_CLASSES, SHAPE_NAMES[i], TEXTURES[i % 3])
                        for i in range(IMAGENET_CLASSES))
VOC_STYLES = tuple(_style(i, len(VOC_CLASSES), SHAPE_NAMES[i % 10], TEXTURES[i // 10])
                   for i in range(len(VOC_CLASSES)))
COCO_STYLES = tuple(_style(i, len(COCO_USED_IDS), SHAPE_NAMES[(3 * i + 1) % 10], TEXTURES[i % 3])
                    for i in range(len(COCO_USED_IDS)))


def _background(rng, height, width):
    """Muted colours varying smoothly across the image, plus pixel noise."""
    coarse = rng.uniform(60, 200, size=(4, 4, 1)) + rng.uniform(-25, 25, size=(4, 4, 3))
    smooth = Image.fromarray(coarse.clip(0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return np.asarray(smooth, dtype=np.float32) + rng.normal(0, 8, size=(height, width, 3))


def _texture(style, rng, height, width):
    """The class's fill for the whole canvas: its hue, lightly jittered per instance, in its pattern."""
    hue = (style["hue"] + rng.uniform(-0.02, 0.02)) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, 0.8, rng.uniform(0.75, 0.95))) * 255
    yy, xx = np.mgrid[0:height, 0:width]
    period = max(4, round(min(height, width) / 16))
    if style["texture"] == "stripes":
        dark = ((xx + yy) // period) % 2 == 1
    elif style["texture"] == "checker":
        dark = ((xx // period) + (yy // period)) % 2 == 1
    else:
        dark = np.zeros((height, width), dtype=bool)
    fill = np.where(dark[..., None], colour * 0.4, colour)
    return fill + rng.normal(0, 6, size=(height, width, 3))


def _polygon(style, rng, height, width, side, inside):
    """Vertices of one instance: the class's unit shape scaled to ``side`` px, rotated, placed.

    ``inside`` keeps every vertex within the image; otherwise the centre may sit near the border
    so the object is truncated (as Pascal's ``truncated`` flag describes).
    """
    angle = rng.uniform(-0.3, 0.3)
    aspect = rng.uniform(0.85, 1.15)
    cos, sin = math.cos(angle), math.sin(angle)
    unit = [(x * aspect, y / aspect) for x, y in SHAPES[style["shape"]]]
    offsets = [(side / 2 * (x * cos - y * sin), side / 2 * (x * sin + y * cos)) for x, y in unit]
    xs, ys = [dx for dx, _ in offsets], [dy for _, dy in offsets]
    if inside:
        cx = rng.uniform(-min(xs), width - 1 - max(xs))
        cy = rng.uniform(-min(ys), height - 1 - max(ys))
    else:
        cx, cy = rng.uniform(0, width - 1), rng.uniform(0, height - 1)
    return [(cx + dx, cy + dy) for dx, dy in offsets]


def _rasterize(polygon, height, width, margin=0):
    """Pixel mask of a polygon, optionally grown by ``margin`` px on every side."""
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(polygon, fill=255)
    if margin:
        canvas = canvas.filter(ImageFilter.MaxFilter(2 * margin + 1))
    return np.asarray(canvas) > 0


SMALL_FRACTION = 0.12  # share of instances drawn small; VOC marks them difficult


def _render(rng, height, width, styles, wanted, allow_truncation, scale_range=(0.25, 0.6)):
    """Draw the ``wanted`` (label, small) instances without overlap on a fresh background.

    Returns the image, one record per drawn instance (class index, polygon, pixel mask, whether
    it is small, i.e. "difficult", or cut by the border, i.e. "truncated") and the wanted
    instances that found no room. Objects never overlap, so each mask is also the visible
    region and the boxes are tight. The first instance always fits: the canvas is empty and
    even a small one covers more than the minimum area.
    """
    image = _background(rng, height, width)
    objects, no_room, taken = [], [], np.zeros((height, width), dtype=bool)
    for label, small in wanted:
        for _attempt in range(30):
            scale = rng.uniform(0.12, 0.18) if small else rng.uniform(*scale_range)
            side = max(8.0, min(height, width) * scale)
            inside = not (allow_truncation and rng.random() < 0.1)
            polygon = _polygon(styles[label], rng, height, width, side, inside)
            mask = _rasterize(polygon, height, width)
            # A small margin keeps neighbouring objects visually separate.
            if mask.sum() >= 16 and not (_rasterize(polygon, height, width, margin=2) & taken).any():
                break
        else:
            no_room.append((label, small))
            continue
        image[mask] = _texture(styles[label], rng, height, width)[mask]
        taken |= mask
        outside = any(x < 0 or y < 0 or x > width - 1 or y > height - 1 for x, y in polygon)
        objects.append({"label": label, "polygon": polygon, "mask": mask,
                        "difficult": bool(small), "truncated": outside})
    return image.clip(0, 255).astype(np.uint8), objects, no_room


class _ClassQueue:
    """The instances of one detection split, dealt in shuffled rounds of all classes.

    Every class then appears in every split, about equally often. The first round is all
    full-sized, so each class has ground truth that is not "difficult": Pascal's evaluator
    ignores difficult objects, and a class with none left would score AP 0 even for a
    perfect detector.
    """

    def __init__(self, rng, classes):
        self.rng, self.classes, self.queue, self.first_round = rng, classes, [], True

    def take(self, count):
        while len(self.queue) < count:
            self.queue += [(int(label), not self.first_round and self.rng.random() < SMALL_FRACTION)
                           for label in self.rng.permutation(self.classes)]
            self.first_round = False
        taken, self.queue = self.queue[:count], self.queue[count:]
        return taken

    def put_back(self, instances):
        """Instances that found no room in one image go first into the next."""
        self.queue = list(instances) + self.queue


def _render_scene(rng, queue, height, width, styles, allow_truncation, closeup=False):
    """An image of 1-3 instances dealt from ``queue``, or of one instance filling most of it (a close-up)."""
    count, scale_range = (1, (0.6, 0.7)) if closeup else (int(rng.integers(1, 4)), (0.25, 0.6))
    image, objects, no_room = _render(rng, height, width, styles, queue.take(count), allow_truncation, scale_range)
    queue.put_back(no_room)
    return image, objects


def _pixel_box(mask):
    """Inclusive 0-based pixel extent (x0, y0, x1, y1) of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def _image_size(rng, size):
    """Height and width vary by +-25% around ``size``, as real photos vary."""
    low, high = round(0.75 * size), round(1.25 * size)
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _save_jpeg(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=90)


def write_imagenet(root, rng, size):
    """ImageFolder tree, one object of the class per image; folder names are synset-like."""
    synsets = [f"n{i + 1:08d}" for i in range(IMAGENET_CLASSES)]
    for split, per_class in IMAGENET_PER_CLASS.items():
        for label, synset in enumerate(synsets):
            for index in range(per_class):
                image, _, _ = _render(rng, size, size, IMAGENET_STYLES, [(label, rng.random() < SMALL_FRACTION)],
                                      False)
                _save_jpeg(image, root / split / synset / f"{synset}_{index}.JPEG")
    (root / "synsets.txt").write_text(
        "".join(f"{s} {style['shape']}\n" for s, style in zip(synsets, IMAGENET_STYLES)))
    return {split: per_class * IMAGENET_CLASSES for split, per_class in IMAGENET_PER_CLASS.items()}


def _voc_annotation(year, file_id, height, width, objects):
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{year}"
    ET.SubElement(root, "filename").text = f"{file_id}.jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "bt-transfer synthetic"
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = VOC_CLASSES[obj["label"]]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj["truncated"]))
        ET.SubElement(node, "difficult").text = str(int(obj["difficult"]))
        box = ET.SubElement(node, "bndbox")
        # Pascal boxes are 1-based inclusive pixel indices.
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), _pixel_box(obj["mask"])):
            ET.SubElement(box, key).text = str(value + 1)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(root, year, splits, rng, size):
    """One Pascal VOC year; ``train``/``val`` halve ``trainval`` as in the real release."""
    counter, counts = 0, {}
    for split, count in splits.items():
        ids, queue = [], _ClassQueue(rng, len(VOC_CLASSES))
        for _ in range(count):
            counter += 1
            file_id = f"{counter:06d}" if year == 2007 else f"{year}_{counter:06d}"
            height, width = _image_size(rng, size)
            image, objects = _render_scene(rng, queue, height, width, VOC_STYLES, True)
            _save_jpeg(image, root / "JPEGImages" / f"{file_id}.jpg")
            annotation = root / "Annotations" / f"{file_id}.xml"
            annotation.parent.mkdir(parents=True, exist_ok=True)
            annotation.write_text(_voc_annotation(year, file_id, height, width, objects))
            ids.append(file_id)
        lists = {split: ids}
        if split == "trainval":
            lists.update(train=ids[0::2], val=ids[1::2])
        for name, members in lists.items():
            path = root / "ImageSets" / "Main" / f"{name}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{i}\n" for i in members))
        counts[split] = count
    return counts


def write_coco(root, rng, size, splits=COCO_SPLITS):
    """COCO 2017 layout: image folders and instances jsons with polygons for all objects."""
    counts, next_image, next_annotation = {}, 1, 1
    for split, count in splits.items():
        images, annotations, queue = [], [], _ClassQueue(rng, len(COCO_USED_IDS))
        for index in range(count):
            # COCO reports AP for small, medium and large objects (area above 96^2 px in the
            # image's own pixels); at ~128 px no object reaches that, and APl would be undefined.
            # Every CLOSEUP_EVERY-th image is therefore a close-up on a canvas twice as large,
            # which training and testing resize to the same scale as the others.
            closeup = index % CLOSEUP_EVERY == 0
            height, width = _image_size(rng, 2 * size if closeup else size)
            image, objects = _render_scene(rng, queue, height, width, COCO_STYLES, False, closeup)
            file_name = f"{next_image:012d}.jpg"
            _save_jpeg(image, root / split / file_name)
            images.append({"id": next_image, "file_name": file_name, "width": width, "height": height})
            for obj in objects:
                xs = [x for x, _ in obj["polygon"]]
                ys = [y for _, y in obj["polygon"]]
                annotations.append({
                    "id": next_annotation, "image_id": next_image,
                    "category_id": COCO_USED_IDS[obj["label"]], "iscrowd": 0,
                    "segmentation": [[round(v, 2) for point in obj["polygon"] for v in point]],
                    # COCO's area is the mask's pixel count and its bbox the polygon's extent.
                    "area": float(obj["mask"].sum()),
                    "bbox": [round(min(xs), 2), round(min(ys), 2),
                             round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)],
                })
                next_annotation += 1
            next_image += 1
        write_json(root / "annotations" / f"instances_{split}.json", {
            "info": {"description": "bt-transfer synthetic data in the COCO 2017 layout", "version": "1"},
            "licenses": [], "images": images, "annotations": annotations,
            "categories": [dict(c) for c in COCO_CATEGORIES],
        })
        counts[split] = count
    return counts


def _manifest(seed, size):
    return {"generator": "bt_transfer.synthetic", "format_version": FORMAT_VERSION, "seed": seed, "size": size}


def _holds(out, manifest):
    """Whether ``out`` is a finished generation described by ``manifest``."""
    try:
        existing = json.loads((out / MANIFEST).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    return {key: existing.get(key) for key in manifest} == manifest


def generate(out, seed=0, size=128):
    """Write all generated datasets under ``out`` and return ``out`` as a Path.

    If ``out`` already holds a finished generation with the same seed and size it is reused;
    any other non-empty ``out`` is refused rather than overwritten.
    """
    out = Path(out)
    if not 64 <= size <= 1024:
        raise ValueError(f"size must be between 64 and 1024 px (got {size}); objects need room to vary")
    wanted = _manifest(seed, size)
    if out.is_dir() and any(out.iterdir()):
        if _holds(out, wanted):
            return out
        raise FileExistsError(
            f"{out} is not empty and is not a finished generation with seed={seed}, size={size} "
            f"(no matching {MANIFEST}); remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        # Independent streams per dataset: changing one dataset never shifts another's pixels.
        counts = {
            "imagenet": write_imagenet(staging / "imagenet", np.random.default_rng([seed, 0]), size),
            "VOC2007": write_voc(staging / "VOC2007", 2007, VOC_SPLITS["VOC2007"],
                                 np.random.default_rng([seed, 1]), size),
            "VOC2012": write_voc(staging / "VOC2012", 2012, VOC_SPLITS["VOC2012"],
                                 np.random.default_rng([seed, 2]), size),
            "coco": write_coco(staging / "coco", np.random.default_rng([seed, 3]), size),
        }
        write_json(staging / MANIFEST, {**wanted, "images": counts})
        staging.chmod(0o755)  # mkdtemp makes it private; the finished tree should not be
        try:
            if out.is_dir():
                out.rmdir()  # empty (checked above), e.g. a freshly made temporary folder
            staging.rename(out)
        except OSError:
            # Another process finished the same generation first: its tree is as good as ours.
            if not _holds(out, wanted):
                raise
            shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bt_transfer.synthetic", description=__doc__.split("\n\n")[0],
        epilog="Point DETECTRON2_DATASETS at OUT to train on it with the builtin dataset names.")
    parser.add_argument("--out", required=True, type=Path, help="folder to create (must not exist or be empty)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, byte-identical files (default 0)")
    parser.add_argument("--size", type=int, default=128,
                        help="nominal image side in px; VOC/COCO sides vary +-25%% (default 128)")
    args = parser.parse_args(argv)
    try:
        out = generate(args.out, seed=args.seed, size=args.size)
    except (ValueError, FileExistsError) as error:
        parser.exit(2, f"error: {error}\n")
    counts = json.loads((out / MANIFEST).read_text())["images"]
    print(f"generated datasets under {out}: " + ", ".join(
        f"{name} {sum(splits.values())} images ({', '.join(f'{s} {n}' for s, n in splits.items())})"
        for name, splits in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
