"""The contents of the datasets a run will read, checked before training: ``check_contents(names, evaluated)``.

Where ``layout.check_datasets`` asks whether the files are there, this reads them all, as Detectron2's
loaders, training and evaluation will: every annotation (``voc_checks``, ``coco_checks``) and every listed
image (``image_checks``). All problems are collected and raised as one ``DatasetError`` that groups them by
kind and names each file, image or annotation id. A split that passed is remembered (``check_cache``) and
not read again while its files are unchanged.
"""
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bt_transfer.core.progress import Progress
from bt_transfer.datasets import check_cache, coco_checks, facts, image_checks, problems, voc_checks
from bt_transfer.datasets.check_cache import CheckCache, code_fingerprint, file_stats, fingerprint, folder_stats
from bt_transfer.datasets.image_checks import image_problem
from bt_transfer.datasets.layout import DATASETS, DatasetError, VOCSplit, check_datasets
from bt_transfer.datasets.problems import report

IMAGE_THREADS = 8  # reading headers waits on storage more than on the CPU


@dataclass(frozen=True)
class VOCContents:
    folder: Path
    split: str
    classes: tuple
    evaluated: bool

    @property
    def split_list(self):
        return self.folder / "ImageSets" / "Main" / f"{self.split}.txt"

    def title(self, name):
        return f"{name} in {self.folder} (split list ImageSets/Main/{self.split}.txt)"

    def files(self):
        ids = self.split_list.read_text().split()
        return file_stats([self.split_list, *(self.folder / "Annotations" / f"{i}.xml" for i in ids),
                           *(self.folder / "JPEGImages" / f"{i}.jpg" for i in ids)])

    def expectation(self):
        return {"classes": self.classes, "evaluated": self.evaluated}

    def annotations(self):
        """(images to check as (path, item, width, height), problems of the annotations)."""
        ids, found = voc_checks.split_ids(self.split_list)
        images = []
        for image_id in ids:
            size, more = voc_checks.annotation_problems(self.folder / "Annotations" / f"{image_id}.xml",
                                                        self.classes, self.evaluated)
            found += more
            images.append((self.folder / "JPEGImages" / f"{image_id}.jpg", f"JPEGImages/{image_id}.jpg",
                           *(size or (None, None))))
        return images, found


@dataclass(frozen=True)
class COCOContents:
    json_file: Path
    image_root: Path
    categories: dict  # {id: name} of Detectron2's builtin metadata

    def title(self, name):
        return f"{name} in {self.json_file} (images in {self.image_root})"

    def files(self):
        stats = file_stats([self.json_file])
        return None if stats is None else stats + folder_stats(self.image_root)

    def expectation(self):
        return {"categories": sorted(self.categories.items())}

    def annotations(self):
        records, found = coco_checks.instances_problems(self.json_file, self.categories)
        images = [(self.image_root / r["file_name"], f"{r['file_name']} (image {r['id']})", r["width"], r["height"])
                  for r in records.values()]
        return images, found


def contents_of(name, evaluated):
    """What ``name`` reads, from its registration in Detectron2's catalog."""
    from detectron2.data import MetadataCatalog

    metadata = MetadataCatalog.get(name)
    if isinstance(DATASETS[name], VOCSplit):
        return VOCContents(Path(metadata.dirname), metadata.split, tuple(metadata.thing_classes), evaluated)
    classes = metadata.thing_classes
    return COCOContents(Path(metadata.json_file), Path(metadata.image_root),
                        {i: classes[c] for i, c in metadata.thing_dataset_id_to_contiguous_id.items()})


def images_problems(images, name, threads=IMAGE_THREADS):
    """The problems of every image, in order, with a progress line every few seconds on long checks."""
    progress = Progress(len(images), f"checking {name}", "img")
    found = []
    with ThreadPoolExecutor(threads) as pool:
        for done, problem in enumerate(pool.map(lambda image: image_problem(*image), images), 1):
            progress.update(done, 1)
            if problem is not None:
                found.append(problem)
    return found


CHECK_MODULES = (check_cache, coco_checks, facts, image_checks, problems, voc_checks, sys.modules[__name__])


def check_contents(names, evaluated=(), cache=None, stream=None):
    """Raise ``DatasetError`` listing every problem of the annotations and images of ``names``.

    First ``check_datasets(names)``: the files must be in place where ``names`` are registered
    (``use_datasets_root``). ``evaluated``: the names a run evaluates on, whose files the evaluator reads
    again and needs more of. One line per name goes to ``stream`` (default: stderr); ``cache``: a
    ``CheckCache`` (default: the user's). Returns {name: "checked" or "unchanged"}.
    """
    check_datasets(names)
    cache = cache if cache is not None else CheckCache()
    stream = stream or sys.stderr
    code = code_fingerprint(CHECK_MODULES)
    found, outcome = {}, {}
    for name in dict.fromkeys(names):
        contents = contents_of(name, name in evaluated)
        key = contents.title(name)
        files = contents.files()
        stamp = None if files is None else fingerprint(code, name, contents.expectation(), files)
        if cache.passed(key, stamp):
            outcome[name] = "unchanged"
            print(f"{name}: unchanged since it passed its check (recorded in {cache.path})", file=stream)
            continue
        start = time.monotonic()
        images, problems_found = contents.annotations()
        problems_found += images_problems(images, name)
        found[key] = problems_found
        outcome[name] = "checked"
        print(f"{name}: {len(images)} images and their annotations checked in {time.monotonic() - start:.2f} s, "
              f"{len(problems_found)} problem(s)", file=stream)
        if not problems_found and stamp is not None:
            cache.record(key, stamp)
    if any(found.values()):
        raise DatasetError(report(found))
    return outcome
