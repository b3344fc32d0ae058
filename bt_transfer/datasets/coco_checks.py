"""Every record of a COCO instances json, read as Detectron2 0.6 and pycocotools read it.

``detectron2/data/datasets/coco.py`` sets the dataset's ``thing_classes`` and id map from the json's
``categories`` (the builtin ``coco_2017_*`` metadata already holds the 80 COCO ones and refuses other
values), requires unique annotation ids, no ``ignore``, a non-empty ``bbox`` and a ``category_id`` of
those categories; it silently drops polygons of fewer than 3 points and the instances left without
one, and annotations whose ``image_id`` names no image. Training then clips boxes to the image and
drops empty ones; an instance without segmentation beside others with one is a crash. COCOeval reads
``area``, ``iscrowd`` and the masks of the evaluated split.
"""
import json
import math
from collections import Counter

from bt_transfer.datasets.facts import COCO_KNOWN_DEGENERATE
from bt_transfer.datasets.problems import Kind, Problem

UNREADABLE = Kind("unreadable json", "a complete, valid JSON file")
NOT_INSTANCES = Kind("not COCO instances", "an object with lists 'images', 'annotations' and 'categories'")
CATEGORIES = Kind("categories differ", "exactly the 80 COCO categories (ids and names) of Detectron2's builtin "
                  "coco metadata")
BAD_IMAGE = Kind("bad image record", "an integer 'id', a 'file_name' and positive integer 'width', 'height'")
DUPLICATE_IMAGE_ID = Kind("duplicate image id", "each image id once")
DUPLICATE_FILE = Kind("duplicate file name", "each file name once")
DUPLICATE_ANNOTATION_ID = Kind("duplicate annotation id", "each annotation id once (Detectron2 asserts it)")
BAD_ANNOTATION = Kind("bad annotation record", "an integer 'id', 'iscrowd' 0 or 1, no 'ignore', a number "
                      "'area' >= 0 (COCOeval's size ranges)")
ORPHAN = Kind("annotation of an unlisted image", "an 'image_id' of the json's images")
UNKNOWN_CATEGORY = Kind("unknown category", "a 'category_id' of the json's categories and of the 80 COCO ones")
BAD_BOX = Kind("malformed box", "'bbox' [x, y, w, h] of 4 finite numbers")
EMPTY_BOX = Kind("box without area", "bbox w > 0 and h > 0")
OUTSIDE = Kind("box outside its image", "0 <= x, x + w <= width, 0 <= y, y + h <= height, within 1 px")
EMPTY_MASK = Kind("empty mask", "a 'segmentation' of polygons (each of >= 3 points, an even number of "
                  "coordinates) with non-zero area, or an RLE of the image's size with non-zero area")
BAD_POLYGON = Kind("malformed polygon", "numbers only, an even count, at least 3 points")

EDGE_TOLERANCE = 1.0  # px: boxes are rounded polygon extents, and training clips to the image anyway


def load_instances(json_file):
    """(data, problems): the parsed json, or None with the problem naming the parse position."""
    raw = json_file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, [Problem(UNREADABLE, f"{json_file.name} is not UTF-8 text ({error.reason} at byte {error.start})")]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        ends = " where the file ends: cut short?" if error.pos >= len(text.rstrip()) else ""
        return None, [Problem(UNREADABLE, f"{json_file.name} line {error.lineno} column {error.colno} (character "
                                          f"{error.pos} of {len(text)}{ends}): {error.msg}")]
    if not (isinstance(data, dict) and all(isinstance(data.get(key), list)
                                           for key in ("images", "annotations", "categories"))):
        return None, [Problem(NOT_INSTANCES, json_file.name)]
    return data, []


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def category_problems(categories, builtin):
    """The json's ``categories`` against ``builtin`` ({id: name}, Detectron2's coco metadata)."""
    malformed = [index for index, c in enumerate(categories)
                 if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str))]
    if malformed:
        return [Problem(CATEGORIES, f"categories[{index}] without an integer id and a name") for index in malformed]
    declared = {c["id"]: c["name"] for c in categories}
    findings = [f"id {i} {builtin[i]!r} missing" for i in builtin if i not in declared]
    findings += [f"id {i} {declared[i]!r} not a COCO category" for i in declared if i not in builtin]
    findings += [f"id {i} named {declared[i]!r} (COCO: {builtin[i]!r})" for i in declared
                 if i in builtin and declared[i] != builtin[i]]
    findings += [f"id {i} declared x{n}" for i, n in Counter(c["id"] for c in categories).items() if n > 1]
    return [Problem(CATEGORIES, finding) for finding in findings]


def image_records(images):
    """({id: image record} of the usable records, problems)."""
    problems, usable = [], {}
    for index, image in enumerate(images):
        ok = (isinstance(image, dict) and _is_int(image.get("id")) and isinstance(image.get("file_name"), str)
              and all(_is_int(image.get(k)) and image[k] > 0 for k in ("width", "height")))
        if not ok:
            problems.append(Problem(BAD_IMAGE, f"images[{index}]"))
        elif image["id"] in usable:
            problems.append(Problem(DUPLICATE_IMAGE_ID, f"image {image['id']}"))
        else:
            usable[image["id"]] = image
    names = Counter(image["file_name"] for image in usable.values())
    problems += [Problem(DUPLICATE_FILE, f"{name} x{count}") for name, count in names.items() if count > 1]
    return usable, problems


def _polygon_area(polygon):
    xs, ys = polygon[0::2], polygon[1::2]
    return abs(sum(x * y for x, y in zip(xs, ys[1:] + ys[:1])) - sum(x * y for x, y in zip(xs[1:] + xs[:1], ys))) / 2


def rle_counts(counts):
    """The run lengths of COCO's compressed RLE string (pycocotools' rleFrString), or None if malformed."""
    runs, value, shift = [], 0, 0
    for char in counts.encode():
        chunk = char - 48
        if not 0 <= chunk < 64:
            return None
        value |= (chunk & 0x1F) << shift
        shift += 5
        if chunk & 0x20:
            continue
        if chunk & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value, shift = 0, 0
    return runs if shift == 0 else None


def _rle_problems(rle, image, where):
    size, counts = rle.get("size"), rle.get("counts")
    runs = rle_counts(counts) if isinstance(counts, str) else counts
    if size != [image["height"], image["width"]]:
        found = f"RLE of size {size!r} on an image of height {image['height']} and width {image['width']}"
    elif not (isinstance(runs, list) and all(_is_int(r) and r >= 0 for r in runs) and sum(runs) == size[0] * size[1]):
        found = "RLE whose counts do not cover its size"
    elif not any(runs[1::2]):
        found = "RLE of zero area"
    else:
        return []
    return [Problem(EMPTY_MASK, f"{where} {found}")]


def mask_problems(segmentation, image, where):
    """Problems of one annotation's mask (polygons or RLE) on its image."""
    if isinstance(segmentation, dict):
        return _rle_problems(segmentation, image, where)
    if not isinstance(segmentation, list) or not segmentation:
        return [Problem(EMPTY_MASK, f"{where} segmentation {segmentation!r}")]
    problems, area = [], 0.0
    for index, polygon in enumerate(segmentation):
        if not (isinstance(polygon, list) and len(polygon) % 2 == 0 and len(polygon) >= 6
                and all(map(_is_number, polygon))):
            length = len(polygon) if isinstance(polygon, list) else type(polygon).__name__
            problems.append(Problem(BAD_POLYGON, f"{where} polygon {index} ({length} values)"))
        else:
            area += _polygon_area(polygon)
    if area == 0:
        problems.append(Problem(EMPTY_MASK, f"{where} polygons of zero area"))
    return problems


def _well_formed(box):
    return isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))


def box_problems(box, image, where):
    if not _well_formed(box):
        return [Problem(BAD_BOX, f"{where} bbox {box!r}")]
    x, y, w, h = box
    found = f"{where} bbox ({x:g} {y:g} {w:g} {h:g})"
    if not (w > 0 and h > 0):
        return [Problem(EMPTY_BOX, found)]
    width, height = image["width"], image["height"]
    if not (x >= -EDGE_TOLERANCE and y >= -EDGE_TOLERANCE and x + w <= width + EDGE_TOLERANCE
            and y + h <= height + EDGE_TOLERANCE):
        return [Problem(OUTSIDE, f"{found} in {width}x{height}")]
    return []


def annotation_problems(annotations, images, builtin, declared, known_degenerate=frozenset()):
    """Problems of every annotation: ids, its image, category, box and mask.

    ``images``: {id: record}; ``builtin``, ``declared``: the category ids of Detectron2's metadata and of the
    json; ``known_degenerate``: image ids whose zero-size annotations are known defects of the real release.
    """
    problems, seen = [], Counter()
    for index, annotation in enumerate(annotations):
        if not isinstance(annotation, dict):
            problems.append(Problem(BAD_ANNOTATION, f"annotations[{index}]"))
            continue
        ann_id, image_id = annotation.get("id"), annotation.get("image_id")
        where = f"annotation {ann_id!r} (image {image_id!r})"
        if _is_int(ann_id):
            seen[ann_id] += 1
        if not (_is_int(ann_id) and annotation.get("iscrowd", 0) in (0, 1) and not annotation.get("ignore", 0)
                and _is_number(annotation.get("area")) and annotation["area"] >= 0):
            problems.append(Problem(BAD_ANNOTATION, where))
        if not (_is_int(image_id) and image_id in images):
            problems.append(Problem(ORPHAN, where))
            continue
        category = annotation.get("category_id")
        if not (_is_int(category) and category in builtin and category in declared):
            problems.append(Problem(UNKNOWN_CATEGORY, f"{where} category_id {category!r}"))
        box, image = annotation.get("bbox"), images[image_id]
        found = box_problems(box, image, where) + mask_problems(annotation.get("segmentation"), image, where)
        if image_id in known_degenerate and _well_formed(box) and min(box[2:]) == 0:
            found = [problem for problem in found if problem.kind not in (EMPTY_BOX, EMPTY_MASK)]
        problems += found
    problems += [Problem(DUPLICATE_ANNOTATION_ID, f"annotation {ann_id!r} x{count}")
                 for ann_id, count in seen.items() if count > 1]
    return problems


def instances_problems(json_file, builtin):
    """(images {id: record}, problems) of an instances json; ``builtin``: {category id: name} of Detectron2."""
    data, problems = load_instances(json_file)
    if data is None:
        return {}, problems
    problems += category_problems(data["categories"], builtin)
    images, image_problems = image_records(data["images"])
    declared = {c["id"] for c in data["categories"] if isinstance(c, dict) and _is_int(c.get("id"))}
    known = COCO_KNOWN_DEGENERATE.get(json_file.name, frozenset())
    problems += image_problems + annotation_problems(data["annotations"], images, builtin, declared, known)
    return images, problems
