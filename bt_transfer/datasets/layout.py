"""Detectron2's builtin VOC and COCO dataset names, pointed at a chosen root and checked before training.

Detectron2 registers ``voc_2007_trainval``, ``coco_2017_train`` and the rest once, when ``detectron2.data``
is first imported, under ``$DETECTRON2_DATASETS`` as it was then. ``use_datasets_root(root)`` re-registers
the names this suite uses with Detectron2's own loaders and metadata, so the configs keep their standard
names wherever the data lives; ``check_datasets(names)`` then verifies every path those loaders will open,
so a wrong root fails in a second with the exact path and the expected layout.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bt_transfer.core.errors import UserError
from bt_transfer.datasets.facts import COCO_SIZE_RANGES, REAL_IMAGES


@dataclass(frozen=True)
class VOCSplit:
    folder: str  # e.g. "VOC2007", relative to the datasets root
    split: str   # the list ImageSets/Main/<split>.txt
    year: int

    def register(self, name, root):
        from detectron2.data import MetadataCatalog
        from detectron2.data.datasets import register_pascal_voc

        register_pascal_voc(name, os.path.join(root, self.folder), self.split, self.year)
        MetadataCatalog.get(name).evaluator_type = "pascal_voc"

    @staticmethod
    def root(metadata):
        return Path(metadata.dirname).parent

    @staticmethod
    def problem(metadata):
        """(path, what is wrong) for the first path the VOC loader would fail on, or None."""
        folder = Path(metadata.dirname)
        split_list = folder / "ImageSets" / "Main" / f"{metadata.split}.txt"
        for path in (folder, folder / "JPEGImages", folder / "Annotations"):
            if not path.is_dir():
                return path, "missing folder"
        if not split_list.is_file():
            return split_list, "missing split list"
        ids = split_list.read_text().split()
        if not ids:
            return split_list, "empty split list (no image ids)"
        for image_id in ids:
            for path in (folder / "Annotations" / f"{image_id}.xml", folder / "JPEGImages" / f"{image_id}.jpg"):
                if not path.is_file():
                    return path, f"missing file (id '{image_id}' is listed in {split_list.name})"
        return None


@dataclass(frozen=True)
class COCOSplit:
    images: str      # e.g. "coco/train2017", relative to the datasets root
    annotations: str  # e.g. "coco/annotations/instances_train2017.json"

    def register(self, name, root):
        from detectron2.data.datasets import register_coco_instances
        from detectron2.data.datasets.builtin_meta import _get_builtin_metadata

        register_coco_instances(name, _get_builtin_metadata("coco"),
                                os.path.join(root, self.annotations), os.path.join(root, self.images))

    @staticmethod
    def root(metadata):
        return Path(metadata.image_root).parent.parent

    @staticmethod
    def problem(metadata):
        """(path, what is wrong) for the first path the COCO loader would fail on, or None."""
        if not Path(metadata.image_root).is_dir():
            return Path(metadata.image_root), "missing image folder"
        if not Path(metadata.json_file).is_file():
            return Path(metadata.json_file), "missing annotation json"
        return None


# The names this suite trains and tests on, in Detectron2's standard layouts under one root.
DATASETS = {
    "voc_2007_trainval": VOCSplit("VOC2007", "trainval", 2007),
    "voc_2012_trainval": VOCSplit("VOC2012", "trainval", 2012),
    "voc_2007_test": VOCSplit("VOC2007", "test", 2007),
    "coco_2017_train": COCOSplit("coco/train2017", "coco/annotations/instances_train2017.json"),
    "coco_2017_val": COCOSplit("coco/val2017", "coco/annotations/instances_val2017.json"),
}
# The names the suite's configs evaluate on (detection_configs/, DATASETS.TEST).
EVALUATED = ("voc_2007_test", "coco_2017_val")

# Shown when a check fails: the standard layout of a datasets root, as Detectron2 reads it.
EXPECTED_LAYOUT = """\
    VOC2007/
      Annotations/<id>.xml           Pascal XML: size, objects (name, bndbox, difficult)
      JPEGImages/<id>.jpg
      ImageSets/Main/trainval.txt    image ids, one per line (voc_2007_trainval)
      ImageSets/Main/test.txt        (voc_2007_test)
    VOC2012/                         the same, with ImageSets/Main/trainval.txt (voc_2012_trainval)
    coco/
      train2017/<file_name>          (coco_2017_train)
      val2017/<file_name>            (coco_2017_val)
      annotations/instances_train2017.json, instances_val2017.json
                                     COCO instances with the 80 COCO categories"""


class DatasetError(UserError):
    """Datasets that cannot give the benchmark's numbers; the message names the dataset, file and problem."""


class DatasetLayoutError(DatasetError, FileNotFoundError):
    """A dataset's files are not where Detectron2 will read them. ``paths`` lists the missing ones."""

    def __init__(self, message, paths):
        super().__init__(message)
        self.paths = paths


def default_root():
    """Detectron2's convention: ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def use_datasets_root(root=None):
    """Re-register the names in ``DATASETS`` under ``root`` (default: ``default_root()``).

    Safe to call any number of times, before or after ``detectron2.data`` is imported; returns
    the absolute root. Only registration happens here: nothing is read until a loader runs.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog  # importing registers the builtins

    root = Path(os.path.abspath(root if root is not None else default_root()))
    for name, split in DATASETS.items():
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        # Metadata refuses to change a set value, so the old record goes before the new one.
        MetadataCatalog.remove(name)
        split.register(name, str(root))
    return root


def check_datasets(names, root=None):
    """Raise ``DatasetLayoutError`` unless every file the loaders of ``names`` will read exists.

    With ``root`` the names are first re-registered there (``use_datasets_root(root)``);
    without it the paths they are registered at now are checked. VOC: the folder,
    ``JPEGImages``, ``Annotations``, the split list and each listed id's xml and jpg.
    COCO: the image folder and the instances json. Every failing name is reported at once.
    """
    from detectron2.data import MetadataCatalog

    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise ValueError(f"unknown dataset name(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(DATASETS)}")
    if root is not None:
        use_datasets_root(root)
    problems, paths, roots = [], [], {}
    for name in dict.fromkeys(names):
        split, metadata = DATASETS[name], MetadataCatalog.get(name)
        found = split.problem(metadata)
        if found is not None:
            path, what = found
            problems.append(f"  {name}: {what}: {path}")
            paths.append(path)
            roots[os.path.abspath(split.root(metadata))] = None
    if problems:
        root_lines = "\n".join(
            f"  {r}/" + ("" if os.path.isdir(r) else "   (this folder does not exist)") for r in roots)
        raise DatasetLayoutError(
            "datasets are not where Detectron2 will read them:\n" + "\n".join(problems) +
            "\nExpected layout under the datasets root ($DETECTRON2_DATASETS, or use_datasets_root(root)):\n"
            f"{root_lines}\n{EXPECTED_LAYOUT}\n"
            "Generated data in this layout: python -m bt_transfer.synthetic --out DIR", paths)


def _images_in(name):
    """How many images the loader of ``name`` will read, from its split list or image folder."""
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(name)
    if metadata.get("split"):
        return len((Path(metadata.dirname) / "ImageSets" / "Main" / f"{metadata.split}.txt").read_text().split())
    return sum(1 for entry in os.scandir(metadata.image_root) if entry.is_file())


def dataset_deviations(names):
    """A deviation when a split holds fewer images than the real one (e.g. generated data)."""
    smaller = [f"{name} {count} images (real: {REAL_IMAGES[name]})"
               for name in names if (count := _images_in(name)) < REAL_IMAGES[name]]
    return [f"not the benchmark's data: {', '.join(smaller)}"] if smaller else []


def check_size_ranges(names):
    """COCO test sets must hold ground truth in every size range the record reports (APs/APm/APl).

    COCOeval reports -1 for a range without ground truth (Detectron2: NaN), and a result record
    holds numbers only: better to stop now than after training. Only sets with a COCO json apply.
    """
    from detectron2.data import MetadataCatalog

    for name in names:
        json_file = MetadataCatalog.get(name).get("json_file")
        if MetadataCatalog.get(name).get("evaluator_type") != "coco" or not json_file:
            continue
        areas = [a["area"] for a in json.loads(Path(json_file).read_text())["annotations"] if not a.get("iscrowd")]
        empty = [label for label, low, high in COCO_SIZE_RANGES if not any(low <= area < high for area in areas)]
        if empty:
            raise DatasetError(
                f"{name} ({json_file}) has no ground-truth objects of {' or '.join(empty)} size, so COCO's AP for "
                "that range is undefined; use a test set with objects of every size (generated data: --size 256)")
