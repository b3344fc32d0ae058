"""Facts about the benchmark's real datasets, against which a run's data is compared.

Stdlib only: pretraining asks ``generated_manifest`` too.
"""
from pathlib import Path

# Image counts of the real splits: fewer means the run did not see the benchmark's data.
REAL_IMAGES = {"voc_2007_trainval": 5011, "voc_2012_trainval": 11540, "voc_2007_test": 4952,
               "coco_2017_train": 118287, "coco_2017_val": 5000}
# COCO's object-size ranges by area in px^2 (pycocotools' areaRng), as the APs/APm/APl metrics use them.
COCO_SIZE_RANGES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))
# Known defects of the real release that the dataset checks let pass: image ids, per annotation file, whose
# zero-size annotations (a box of height 0 and a polygon of zero area, e.g. annotation 918 of image 200365;
# cocodataset/cocoapi issue 355) are in every published COCO result; Detectron2 drops them in training.
COCO_KNOWN_DEGENERATE = {"instances_train2017.json": frozenset({200365, 550395})}
# What bt_transfer.datasets.synthetic writes at the root of every generated tree.
GENERATED_MANIFEST = "synthetic.json"


def generated_manifest(path):
    """The manifest of the generated tree that holds ``path`` (a folder in it, or its root), else None."""
    path = Path(path).absolute()
    return next((folder / GENERATED_MANIFEST for folder in (path, *path.parents)
                 if (folder / GENERATED_MANIFEST).is_file()), None)
