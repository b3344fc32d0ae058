"""Detectron2's builtin names resolve to the generated data through its own loaders, pycocotools
accepts the COCO jsons, and a wrong root is caught before training with the exact path."""
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image

from bt_transfer.datasets.__main__ import main
from bt_transfer.datasets.layout import DATASETS, DatasetLayoutError, check_datasets, use_datasets_root

VOC_NAMES = ("voc_2007_trainval", "voc_2012_trainval", "voc_2007_test")
COCO_NAMES = ("coco_2017_train", "coco_2017_val")


def _xml_objects(path):
    """Class names and 1-based inclusive boxes straight from the XML, without Detectron2."""
    return [(obj.find("name").text, [int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")])
            for obj in ET.parse(path).findall("object")]


@pytest.mark.parametrize("name", VOC_NAMES)
def test_voc_names_load_through_detectron2_with_the_xml_classes_and_boxes(generated_data, name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    use_datasets_root(generated_data)
    check_datasets([name])
    metadata = MetadataCatalog.get(name)
    folder = generated_data / f"VOC{name[4:8]}"
    split = name.split("_")[-1]
    assert metadata.evaluator_type == "pascal_voc" and metadata.dirname == str(folder)
    dicts = DatasetCatalog.get(name)
    assert [d["image_id"] for d in dicts] == (folder / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
    for record in dicts:
        width, height = Image.open(record["file_name"]).size
        assert (record["width"], record["height"]) == (width, height)
        expected = _xml_objects(folder / "Annotations" / f"{record['image_id']}.xml")
        got = [(metadata.thing_classes[a["category_id"]], a["bbox"]) for a in record["annotations"]]
        # Detectron2 turns Pascal's 1-based inclusive boxes into 0-based half-open ones.
        assert got == [(cls, [x0 - 1.0, y0 - 1.0, float(x1), float(y1)]) for cls, (x0, y0, x1, y1) in expected]
        for _, (x0, y0, x1, y1) in got:
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


@pytest.mark.parametrize("name", COCO_NAMES)
def test_coco_names_load_through_detectron2_with_the_json_categories(generated_data, name):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    use_datasets_root(generated_data)
    check_datasets(name)
    metadata = MetadataCatalog.get(name)
    data = json.loads(Path(metadata.json_file).read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    contiguous_to_id = {v: k for k, v in metadata.thing_dataset_id_to_contiguous_id.items()}
    dicts = DatasetCatalog.get(name)
    assert metadata.evaluator_type == "coco" and len(dicts) == len(data["images"])
    loaded = 0
    for record in dicts:
        width, height = Image.open(record["file_name"]).size
        assert (record["width"], record["height"]) == (width, height)
        for annotation in record["annotations"]:
            x, y, w, h = annotation["bbox"]
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w > 0 and h > 0
            category = annotation["category_id"]  # contiguous 0..79 after Detectron2's mapping
            assert metadata.thing_classes[category] == names[contiguous_to_id[category]]
            assert annotation["segmentation"] and len(annotation["segmentation"][0]) >= 6
            loaded += 1
    assert loaded == len(data["annotations"])


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_coco_ground_truth_scores_ap_1_against_itself_in_pycocotools(generated_data, split):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    truth = COCO(str(generated_data / "coco" / "annotations" / f"instances_{split}.json"))
    for iou_type in ("bbox", "segm"):
        detections = []
        for ann in truth.loadAnns(truth.getAnnIds()):
            detection = {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0,
                         "bbox": ann["bbox"]}
            if iou_type == "segm":
                rle = truth.annToRLE(ann)
                detection["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
            detections.append(detection)
        evaluation = COCOeval(truth, truth.loadRes(detections), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        assert evaluation.stats[0] == pytest.approx(1.0), iou_type  # AP at IoU .50:.95
        assert evaluation.stats[1] == pytest.approx(1.0), iou_type  # AP50


def test_builtin_registration_under_the_environment_variable_is_checked_as_is(generated_data, tmp_path):
    """No call to use_datasets_root: Detectron2's import-time registration reads $DETECTRON2_DATASETS."""
    script = (
        "import detectron2.data as d\n"
        "from bt_transfer.datasets.layout import DATASETS, check_datasets\n"
        "check_datasets(list(DATASETS))\n"
        "print(len(d.DatasetCatalog.get('voc_2007_test')), d.MetadataCatalog.get('coco_2017_val').image_root)\n"
    )
    env = {**os.environ, "DETECTRON2_DATASETS": str(generated_data)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["30", str(generated_data / "coco" / "val2017")]


def test_default_root_is_the_environment_variable_then_dot_datasets(generated_data, monkeypatch, tmp_path):
    from detectron2.data import MetadataCatalog

    monkeypatch.setenv("DETECTRON2_DATASETS", str(generated_data))
    assert use_datasets_root() == generated_data
    check_datasets(list(DATASETS))
    monkeypatch.delenv("DETECTRON2_DATASETS")
    monkeypatch.chdir(tmp_path)
    assert use_datasets_root() == tmp_path / "datasets"
    assert MetadataCatalog.get("voc_2007_test").dirname == str(tmp_path / "datasets" / "VOC2007")
    with pytest.raises(DatasetLayoutError, match=str(tmp_path / "datasets") + r"/   \(this folder does not exist\)"):
        check_datasets(["voc_2007_test"])


def test_a_missing_root_names_every_dataset_path_and_the_expected_layout(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    use_datasets_root()
    with pytest.raises(DatasetLayoutError) as error:
        check_datasets(["voc_2007_trainval", "coco_2017_val"])
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert f"voc_2007_trainval: missing folder: {tmp_path}/nowhere/VOC2007\n" in message
    assert f"coco_2017_val: missing image folder: {tmp_path}/nowhere/coco/val2017\n" in message
    assert "ImageSets/Main/trainval.txt" in message and "annotations/instances_train2017.json" in message
    assert error.value.paths == [tmp_path / "nowhere" / "VOC2007", tmp_path / "nowhere" / "coco" / "val2017"]


def _broken_copy(generated_data, tmp_path):
    root = tmp_path / "broken"
    for part in ("VOC2007", "coco"):
        shutil.copytree(generated_data / part, root / part)
    return root


def test_a_missing_split_list_annotation_image_or_json_is_named_exactly(generated_data, tmp_path):
    root = _broken_copy(generated_data, tmp_path)
    check_datasets(["voc_2007_trainval", "voc_2007_test", "coco_2017_train"], root)
    main = root / "VOC2007" / "ImageSets" / "Main"
    (main / "test.txt").unlink()
    first_id = (main / "trainval.txt").read_text().split()[0]
    (root / "VOC2007" / "Annotations" / f"{first_id}.xml").unlink()
    (root / "coco" / "annotations" / "instances_train2017.json").unlink()
    with pytest.raises(DatasetLayoutError) as error:
        check_datasets(["voc_2007_trainval", "voc_2007_test", "coco_2017_train", "coco_2017_val"], root)
    lines = str(error.value).splitlines()
    assert lines[1:4] == [
        f"  voc_2007_trainval: missing file (id '{first_id}' is listed in trainval.txt): "
        f"{root}/VOC2007/Annotations/{first_id}.xml",
        f"  voc_2007_test: missing split list: {main}/test.txt",
        f"  coco_2017_train: missing annotation json: {root}/coco/annotations/instances_train2017.json",
    ]
    assert f"  {root}/" in lines  # the root, followed by the expected tree
    (root / "VOC2007" / "JPEGImages" / f"{first_id}.jpg").unlink()
    shutil.copy(generated_data / "VOC2007" / "Annotations" / f"{first_id}.xml", root / "VOC2007" / "Annotations")
    with pytest.raises(DatasetLayoutError, match=rf"JPEGImages/{first_id}\.jpg"):
        check_datasets(["voc_2007_trainval"], root)
    (main / "trainval.txt").write_text("\n")
    with pytest.raises(DatasetLayoutError, match="empty split list"):
        check_datasets(["voc_2007_trainval"], root)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="'voc_2007_val'.*known: voc_2007_trainval, voc_2012_trainval"):
        check_datasets(["voc_2007_test", "voc_2007_val"])


def test_re_pointing_the_names_switches_what_the_loaders_read(generated_data, tmp_path):
    from detectron2.data import DatasetCatalog

    other = tmp_path / "other"
    shutil.copytree(generated_data / "VOC2007", other / "VOC2007")
    (other / "VOC2007" / "ImageSets" / "Main" / "test.txt").write_text("000061\n000062\n")
    use_datasets_root(other)
    use_datasets_root(other)  # idempotent
    assert [d["image_id"] for d in DatasetCatalog.get("voc_2007_test")] == ["000061", "000062"]
    use_datasets_root(generated_data)
    assert len(DatasetCatalog.get("voc_2007_test")) == 30
    assert all(d["file_name"].startswith(str(generated_data)) for d in DatasetCatalog.get("voc_2007_test"))


def test_pascal_evaluator_scores_the_test_ground_truth_as_a_perfect_detector(generated_data):
    """Detectron2's VOC evaluator reads our XML (difficult, truncated, pose) and every class is scorable."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import PascalVOCDetectionEvaluator
    from detectron2.structures import Boxes, Instances

    use_datasets_root(generated_data)
    evaluator = PascalVOCDetectionEvaluator("voc_2007_test")
    evaluator.reset()
    for record in DatasetCatalog.get("voc_2007_test"):
        predicted = Instances((record["height"], record["width"]))
        predicted.pred_boxes = Boxes(torch.tensor([a["bbox"] for a in record["annotations"]]))
        predicted.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        predicted.scores = torch.ones(len(record["annotations"]))
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": predicted}])
    assert evaluator.evaluate()["bbox"] == pytest.approx({"AP": 100.0, "AP50": 100.0, "AP75": 100.0})


def test_the_command_line_check_reports_a_good_and_a_bad_root(generated_data, tmp_path, capsys):
    assert main(["--root", str(generated_data)]) == 0
    assert capsys.readouterr().out == f"{generated_data}: {', '.join(DATASETS)} in place and checked\n"
    with pytest.raises(SystemExit) as exit_info:
        main(["--root", str(tmp_path), "coco_2017_val"])
    assert exit_info.value.code == 1
    assert f"coco_2017_val: missing image folder: {tmp_path}/coco/val2017" in capsys.readouterr().err
