"""Every Pascal VOC annotation of a split, read as Detectron2 0.6 reads it.

``detectron2/data/datasets/pascal_voc.py`` loads the split list with ``np.loadtxt`` (one id per line; a list
of one id is a 0-d array it cannot iterate), then per id ``Annotations/<id>.xml``: ``int`` of the first
``size/width`` and ``size/height``, and per direct ``object`` child its ``name`` (``class_names.index``, so
exactly one of the 20 names) and ``float`` of ``bndbox/xmin, ymin, xmax, ymax``, 1-based inclusive pixels
turned into the box ``(xmin - 1, ymin - 1, xmax, ymax)``. Pascal's evaluator
(``detectron2/evaluation/pascal_voc_evaluation.py``) reads the evaluated split's files again, with ``pose``,
``int`` of ``truncated`` and ``difficult``, and ``int`` box coordinates.
"""
import xml.etree.ElementTree as ET
from collections import Counter

from bt_transfer.datasets.problems import Kind, Problem

SPLIT_LIST = Kind("unusable split list", "one image id per line and at least two ids "
                  "(Detectron2 0.6 reads the list with np.loadtxt)")
DUPLICATE_ID = Kind("duplicate image id", "each image id once in the split list")
UNREADABLE = Kind("unreadable XML", "a well-formed Pascal VOC annotation")
NO_SIZE = Kind("no image size", "<size> with positive integer <width> and <height>")
NO_BOX = Kind("object without class or box", "<name> and <bndbox> with numeric xmin, ymin, xmax, ymax")
UNKNOWN_CLASS = Kind("unknown class", "one of Detectron2's 20 VOC class names, spelled exactly")
EMPTY_BOX = Kind("box without area", "xmin <= xmax and ymin <= ymax (1-based inclusive pixels: "
                 "Detectron2's box xmin - 1 < xmax)")
OUTSIDE = Kind("box outside its image", "1 <= xmin, xmax <= width, 1 <= ymin, ymax <= height of <size>")
EVALUATOR_FIELDS = Kind("fields Pascal's evaluator needs", "<pose>, integer <truncated> and <difficult>, "
                        "integer box coordinates (the test split is read again by the evaluator)")


def split_ids(split_list):
    """(image ids, problems) of a split list, as ``np.loadtxt(dtype=str)`` would read it."""
    rows = [line.split() for line in split_list.read_text().splitlines()]
    rows = [row for row in rows if row]
    problems = [Problem(SPLIT_LIST, f"{split_list.name} line {number} '{' '.join(row)}'")
                for number, row in enumerate(rows, 1) if len(row) != 1]
    ids = [row[0] for row in rows]
    if len(ids) == 1:
        problems.append(Problem(SPLIT_LIST, f"{split_list.name} holds a single id"))
    problems += [Problem(DUPLICATE_ID, f"{image_id} x{count}") for image_id, count in Counter(ids).items()
                 if count > 1]
    return list(dict.fromkeys(ids)), problems


def _number(element, convert):
    try:
        return convert(element.text)
    except (AttributeError, TypeError, ValueError):
        return None


def _object_problems(obj, where, classes, width, height, evaluated):
    name = obj.find("name")
    box = obj.find("bndbox")
    coords = [None if box is None else _number(box.find(key), float) for key in ("xmin", "ymin", "xmax", "ymax")]
    if name is None or None in coords:
        return [Problem(NO_BOX, where)]
    problems = []
    if name.text not in classes:
        problems.append(Problem(UNKNOWN_CLASS, f"{where} {name.text!r}"))
    xmin, ymin, xmax, ymax = coords
    found = f"{where} ({xmin:g} {ymin:g} {xmax:g} {ymax:g})"
    if not (xmin - 1 < xmax and ymin - 1 < ymax):
        problems.append(Problem(EMPTY_BOX, found))
    elif width is not None and not (1 <= xmin and xmax <= width and 1 <= ymin and ymax <= height):
        problems.append(Problem(OUTSIDE, f"{found} in {width}x{height}"))
    if evaluated:
        fields_read = (obj.find("pose") is not None and _number(obj.find("truncated"), int) is not None
                       and _number(obj.find("difficult"), int) is not None
                       and all(_number(box.find(key), int) is not None for key in ("xmin", "ymin", "xmax", "ymax")))
        if not fields_read:
            problems.append(Problem(EVALUATOR_FIELDS, where))
    return problems


def annotation_problems(xml_path, classes, evaluated):
    """((width, height) or None, problems) of one annotation file, named by its path under the VOC folder."""
    where = f"{xml_path.parent.name}/{xml_path.name}"
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        line, column = error.position
        return None, [Problem(UNREADABLE, f"{where} (line {line} column {column}: {str(error).split(':')[0]})")]
    sizes = [_number(root.find(f"size/{key}"), int) for key in ("width", "height")]
    size = tuple(sizes) if None not in sizes and min(sizes) > 0 else None
    problems = [] if size else [Problem(NO_SIZE, where)]
    width, height = size or (None, None)
    for index, obj in enumerate(root.findall("object"), 1):
        problems += _object_problems(obj, f"{where} object {index}", classes, width, height, evaluated)
    return size, problems
