"""Bad detection data is found before training, and named: one fault injected per test into a copy of the
generated data, each caught by the check (``check_contents``, the ``transfer`` command, the datasets CLI)
with the file, image or annotation id; a clean copy passes, and is not read again while it is unchanged."""
import json
import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from bt_transfer.datasets import check_cache
from bt_transfer.datasets.__main__ import main as datasets_cli
from bt_transfer.datasets.check_cache import CheckCache
from bt_transfer.datasets.checks import check_contents
from bt_transfer.datasets.coco_checks import rle_counts
from bt_transfer.datasets.image_checks import image_problem
from bt_transfer.datasets.layout import DATASETS, EVALUATED, DatasetError, use_datasets_root


@pytest.fixture
def root(generated_data, tmp_path):
    """A private copy of the generated VOC and COCO data, to damage."""
    copy = tmp_path / "datasets"
    for part in ("VOC2007", "VOC2012", "coco"):
        shutil.copytree(generated_data / part, copy / part)
    return copy


@pytest.fixture
def cache(tmp_path):
    return CheckCache(tmp_path / "cache" / "dataset-checks.json")


def check(root, cache, names=tuple(DATASETS)):
    use_datasets_root(root)
    return check_contents(names, evaluated=[name for name in names if name in EVALUATED], cache=cache)


def failure(root, cache, names=tuple(DATASETS)):
    with pytest.raises(DatasetError) as error:
        check(root, cache, names)
    return str(error.value)


def voc_ids(root, split, year=2007):
    return (root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def edit_xml(root, image_id, change, year=2007):
    path = root / f"VOC{year}" / "Annotations" / f"{image_id}.xml"
    tree = ET.parse(path)
    change(tree.getroot())
    tree.write(path)


def edit_coco(root, split, change):
    path = root / "coco" / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return data


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def voc_title(root, split):
    return f"voc_2007_{split} in {root}/VOC2007 (split list ImageSets/Main/{split}.txt):"


def coco_title(root, split):
    return (f"coco_2017_{split[:-4]} in {root}/coco/annotations/instances_{split}.json "
            f"(images in {root}/coco/{split}):")


def test_a_clean_copy_passes_every_check(root, cache):
    assert check(root, cache) == dict.fromkeys(DATASETS, "checked")


def test_a_truncated_jpeg_is_named(root, cache):
    image_id = voc_ids(root, "trainval")[3]
    cut_in_half(root / "VOC2007" / "JPEGImages" / f"{image_id}.jpg")
    lines = failure(root, cache).splitlines()
    assert lines[0] == "the datasets fail their checks (1 problem); fix them and rerun:"
    assert lines[1] == voc_title(root, "trainval") and len(lines) == 3
    assert lines[2].startswith("  undecodable image x1 (expected an image file PIL decodes): "
                               f"JPEGImages/{image_id}.jpg (image file is truncated")


def test_a_file_that_is_not_an_image_is_named(root, cache):
    image = json.loads((root / "coco" / "annotations" / "instances_val2017.json").read_text())["images"][4]
    (root / "coco" / "val2017" / image["file_name"]).write_text("<html>404 Not Found</html>\n")
    message = failure(root, cache)
    assert coco_title(root, "val2017") in message.splitlines()
    assert f"undecodable image x1 (expected an image file PIL decodes): {image['file_name']} (image {image['id']}) " \
           "(cannot identify image file" in message


def test_every_problem_is_listed_grouped_by_kind_and_counted(root, cache):
    ids = voc_ids(root, "trainval")
    for image_id in ids[:7]:
        cut_in_half(root / "VOC2007" / "JPEGImages" / f"{image_id}.jpg")
    edit_coco(root, "train2017", lambda data: data["annotations"][0].update(category_id=12))
    message = failure(root, cache)
    lines = message.splitlines()
    assert lines[0].startswith("the datasets fail their checks (8 problems)")
    undecodable = next(line for line in lines if "undecodable image" in line)
    assert undecodable.startswith("  undecodable image x7 ") and undecodable.endswith("(and 2 more)")
    assert all(f"JPEGImages/{image_id}.jpg" in undecodable for image_id in ids[:5])
    assert coco_title(root, "train2017") in lines and "  unknown category x1 " in message


def test_an_unknown_class_in_the_test_split_stops_transfer_before_out_is_written(root, tmp_path):
    from bt_transfer.detection import runner

    image_id = voc_ids(root, "test")[2]
    edit_xml(root, image_id, lambda xml: setattr(xml.find("object/name"), "text", "dragon"))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        runner.main(["voc", "--weights", str(tmp_path / "resnet50.pth"), "--out", str(out), "--num-gpus", "0",
                     "--datasets-root", str(root), "--smoke"])
    lines = str(stop.value).splitlines()
    assert lines[0].startswith("error: the datasets fail their checks (1 problem)")
    assert lines[1:] == [voc_title(root, "test"),
                         "  unknown class x1 (expected one of Detectron2's 20 VOC class names, spelled exactly): "
                         f"Annotations/{image_id}.xml object 1 'dragon'"]
    assert not out.exists()


def test_voc_boxes_without_area_or_outside_their_image_are_named(root, cache):
    first, second = voc_ids(root, "trainval", year=2012)[:2]

    def swap_x(xml):
        box = xml.find("object/bndbox")
        xmin, xmax = box.find("xmin").text, box.find("xmax").text
        box.find("xmin").text, box.find("xmax").text = xmax, xmin

    def past_the_right_edge(xml):
        xml.find("object/bndbox/xmax").text = str(int(xml.find("size/width").text) + 1)

    edit_xml(root, first, swap_x, year=2012)
    edit_xml(root, second, past_the_right_edge, year=2012)
    lines = failure(root, cache).splitlines()
    title = lines.index(f"voc_2012_trainval in {root}/VOC2012 (split list ImageSets/Main/trainval.txt):")
    empty, outside = lines[title + 1: title + 3]
    assert empty.startswith("  box without area x1 (expected xmin <= xmax and ymin <= ymax")
    assert f": Annotations/{first}.xml object 1 (" in empty
    assert outside.startswith("  box outside its image x1 (expected 1 <= xmin, xmax <= width, 1 <= ymin, ymax <= "
                              f"height of <size>): Annotations/{second}.xml object 1 (")


def test_an_empty_coco_segmentation_stops_transfer_before_out_is_written(root, tmp_path):
    from bt_transfer.detection import runner

    annotation = edit_coco(root, "train2017", lambda data: data["annotations"][5].update(segmentation=[]))[
        "annotations"][5]
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        runner.main(["coco", "--weights", str(tmp_path / "resnet50.pth"), "--out", str(out), "--num-gpus", "0",
                     "--datasets-root", str(root), "--smoke"])
    lines = str(stop.value).splitlines()
    assert lines[1] == coco_title(root, "train2017")
    assert lines[2].startswith("  empty mask x1 (expected a 'segmentation' of polygons")
    assert lines[2].endswith(f": annotation {annotation['id']} (image {annotation['image_id']}) segmentation []")
    assert not out.exists()


@pytest.mark.parametrize("fault, expected", [
    (lambda a, image: a["bbox"].__setitem__(2, -5.0), "box without area x1 (expected bbox w > 0 and h > 0)"),
    (lambda a, image: a["bbox"].__setitem__(0, image["width"] - 2.0),
     "box outside its image x1 (expected 0 <= x, x + w <= width, 0 <= y, y + h <= height, within 1 px)"),
    (lambda a, image: a.update(category_id=12),
     "unknown category x1 (expected a 'category_id' of the json's categories and of the 80 COCO ones)"),
    (lambda a, image: a["segmentation"].append([1.0, 2.0, 3.0, 4.0, 5.0]), "malformed polygon x1"),
    (lambda a, image: a.update(segmentation=[[1.0, 1.0, 2.0, 2.0, 3.0, 3.0]]), "empty mask x1"),
    (lambda a, image: a.update(iscrowd=1, segmentation={"size": [image["height"], image["width"]], "counts": [5, 3]}),
     "empty mask x1"),
    (lambda a, image: a.pop("area"), "bad annotation record x1"),
], ids=["negative-width", "outside", "unknown-category", "odd-polygon", "collinear-polygon", "rle-counts", "no-area"])
def test_a_bad_coco_annotation_is_named_by_its_id(root, cache, fault, expected):
    def damage(data):
        annotation = data["annotations"][7]
        fault(annotation, next(i for i in data["images"] if i["id"] == annotation["image_id"]))

    annotation = edit_coco(root, "val2017", damage)["annotations"][7]
    lines = failure(root, cache).splitlines()
    assert lines[1] == coco_title(root, "val2017")
    assert lines[2].startswith(f"  {expected}") and len(lines) == 3
    assert f": annotation {annotation['id']} (image {annotation['image_id']})" in lines[2]


def column_runs(mask):
    """COCO's uncompressed RLE counts of a mask: run lengths in column-major order, starting with zeros."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return ([0] if flat[0] else []) + runs


def test_crowd_rle_masks_pass_in_both_encodings(root, cache):
    from pycocotools import mask as mask_util

    def crowds(data):
        for annotation, compressed in zip(data["annotations"][:2], (False, True)):
            image = next(i for i in data["images"] if i["id"] == annotation["image_id"])
            mask = np.zeros((image["height"], image["width"]), np.uint8, order="F")
            mask[2:9, 3:7] = 1
            counts = mask_util.encode(mask)["counts"].decode() if compressed else column_runs(mask)
            annotation.update(iscrowd=1, segmentation={"size": [image["height"], image["width"]], "counts": counts})

    edit_coco(root, "val2017", crowds)
    assert check(root, cache, ["coco_2017_val"]) == {"coco_2017_val": "checked"}


def test_categories_other_than_detectron2s_80_are_named(root, cache):
    def rename(data):
        data["categories"][0]["name"] = "human"
        data["categories"].append({"id": 91, "name": "unicorn", "supercategory": "animal"})

    edit_coco(root, "val2017", rename)
    lines = failure(root, cache, ["coco_2017_val"]).splitlines()
    assert lines[2] == ("  categories differ x2 (expected exactly the 80 COCO categories (ids and names) of "
                        "Detectron2's builtin coco metadata): id 91 'unicorn' not a COCO category, "
                        "id 1 named 'human' (COCO: 'person')")


def test_duplicate_ids_and_file_names_are_named(root, cache):
    def duplicate(data):
        images, annotations = data["images"], data["annotations"]
        images.append({**images[3], "file_name": "copy.jpg"})  # the id again
        images.append({**images[4], "id": 999})  # the file again
        annotations[1]["id"] = annotations[0]["id"]

    data = edit_coco(root, "train2017", duplicate)
    (root / "coco" / "train2017" / "copy.jpg").write_bytes(
        (root / "coco" / "train2017" / data["images"][3]["file_name"]).read_bytes())
    trainval = root / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    first = voc_ids(root, "trainval")[0]
    trainval.write_text(trainval.read_text() + f"{first}\n")
    message = failure(root, cache)
    assert f"  duplicate image id x1 (expected each image id once in the split list): {first} x2" in message
    assert f"  duplicate image id x1 (expected each image id once): image {data['images'][3]['id']}" in message
    assert f"  duplicate file name x1 (expected each file name once): {data['images'][4]['file_name']} x2" in message
    assert (f"  duplicate annotation id x1 (expected each annotation id once (Detectron2 asserts it)): "
            f"annotation {data['annotations'][0]['id']} x2") in message


def test_a_truncated_json_is_named_with_the_parse_position(root, cache):
    path = root / "coco" / "annotations" / "instances_train2017.json"
    cut_in_half(path)
    text = path.read_text()
    message = failure(root, cache)
    line = next(line for line in message.splitlines() if "unreadable json" in line)
    assert line.startswith("  unreadable json x1 (expected a complete, valid JSON file): instances_train2017.json "
                           f"line {text.count(chr(10)) + 1} column ")
    assert f"(character {len(text)} of {len(text)} where the file ends: cut short?)" in line


def test_an_invalid_json_is_named_with_the_parse_position(root, cache):
    path = root / "coco" / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [], "annotations": [}\n')
    assert ("unreadable json x1 (expected a complete, valid JSON file): instances_val2017.json line 1 column 32 "
            "(character 31 of 33): Expecting value") in failure(root, cache)


def test_a_missing_or_resized_coco_image_is_named(root, cache):
    def resize(data):
        data["images"][1]["width"] += 1

    data = edit_coco(root, "train2017", resize)
    missing, resized = data["images"][0], data["images"][1]
    (root / "coco" / "train2017" / missing["file_name"]).unlink()
    message = failure(root, cache)
    assert (f"  missing image x1 (expected a file at the path the annotation lists): {missing['file_name']} "
            f"(image {missing['id']})") in message
    assert (f"{resized['file_name']} (image {resized['id']}) is {resized['width'] - 1}x{resized['height']} "
            f"(annotation: {resized['width']}x{resized['height']})") in message


def test_the_known_zero_size_annotations_of_real_coco_pass_and_no_others(root, cache):
    """cocoapi issue 355: train2017 image 200365 holds a box of height 0 with a polygon of zero area."""
    def degenerate(data):
        image = data["images"][0]
        for annotation in data["annotations"]:
            if annotation["image_id"] == image["id"]:
                annotation["image_id"] = 200365
        image["id"] = 200365
        annotation = next(a for a in data["annotations"] if a["image_id"] == 200365)
        x, y = annotation["bbox"][:2]
        annotation.update(bbox=[x, y, 1.03, 0.0], area=0.0, segmentation=[[x, y, x, y, x + 1.03, y, x + 1.03, y]])

    edit_coco(root, "train2017", degenerate)
    assert check(root, cache, ["coco_2017_train"]) == {"coco_2017_train": "checked"}
    edit_coco(root, "val2017", degenerate)
    message = failure(root, cache, ["coco_2017_val"])
    assert "box without area x1" in message and "empty mask x1" in message


def test_a_rerun_on_unchanged_data_reads_no_image_and_a_touched_file_is_read_again(root, cache, monkeypatch):
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *args, **kwargs: opened.append(str(path)) or real_open(
        path, *args, **kwargs))
    assert check(root, cache) == dict.fromkeys(DATASETS, "checked")
    assert len(opened) == 60 + 60 + 30 + 60 + 30
    opened.clear()
    assert check(root, cache) == dict.fromkeys(DATASETS, "unchanged")
    assert opened == []

    touched = root / "coco" / "val2017" / sorted(os.listdir(root / "coco" / "val2017"))[0]
    status = touched.stat()
    os.utime(touched, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))
    edit_xml(root, voc_ids(root, "test")[0], lambda xml: None)  # rewritten, unchanged content
    assert check(root, cache) == {**dict.fromkeys(DATASETS, "unchanged"), "coco_2017_val": "checked",
                                  "voc_2007_test": "checked"}
    assert str(touched) in opened and len(opened) == 30 + 30

    cut_in_half(touched)  # a damaged file is never taken from the cache
    opened.clear()
    assert "undecodable image x1" in failure(root, cache)
    assert str(touched) in opened and len(opened) == 30


def test_the_cache_is_one_small_file_outside_the_datasets_root(root, tmp_path, monkeypatch):
    monkeypatch.setenv("BT_TRANSFER_CACHE", str(tmp_path / "user-cache"))
    check(root, None)
    path = tmp_path / "user-cache" / "dataset-checks.json"
    entries = json.loads(path.read_text())
    assert sorted(key.split()[0] for key in entries) == sorted(DATASETS)
    assert path.stat().st_size < 2000 and not any(p.name.startswith("dataset-checks") for p in root.rglob("*"))
    monkeypatch.delenv("BT_TRANSFER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert check_cache.cache_file() == tmp_path / "xdg" / "bt-transfer" / "dataset-checks.json"


def test_the_datasets_command_runs_the_same_checks(root, capsys):
    first = voc_ids(root, "test")[0]
    edit_xml(root, first, lambda xml: xml.find("object/bndbox/xmin").__setattr__("text", "-4"))
    with pytest.raises(SystemExit) as exit_info:
        datasets_cli(["--root", str(root), "voc_2007_test"])
    assert exit_info.value.code == 1
    assert f"box outside its image x1 (expected 1 <= xmin, xmax <= width, 1 <= ymin, ymax <= height of <size>): " \
           f"Annotations/{first}.xml object 1 (-4 " in capsys.readouterr().err


def test_image_size_is_read_as_detectron2_reads_it_after_exif_orientation(tmp_path):
    from detectron2.data.detection_utils import read_image

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    Image.new("RGB", (40, 30), "red").save(path, exif=exif)
    height, width = read_image(str(path), format="RGB").shape[:2]
    assert (width, height) == (30, 40)
    assert image_problem(path, "rotated.jpg", width, height) is None
    assert "rotated.jpg is 30x40 (annotation: 40x30)" in image_problem(path, "rotated.jpg", 40, 30).item


def test_compressed_rle_counts_decode_as_pycocotools_encodes_them():
    from pycocotools import mask as mask_util

    rng = np.random.default_rng(0)
    mask = np.asfortranarray((rng.random((37, 53)) < 0.3).astype(np.uint8))
    assert rle_counts(mask_util.encode(mask)["counts"].decode()) == column_runs(mask)
    assert rle_counts("0\x7f") is None and rle_counts("1P") is None  # outside the alphabet; cut short


# During the run: an image that still fails to decode stops it with the file's path.

def smoke_cfg(*opts):
    from bt_transfer.detection import protocol

    return protocol.resolve_config(protocol.CONFIGS["voc"], [*protocol.SMOKE_OPTS, "MODEL.DEVICE", "cpu", *opts],
                                   world_size=1).cfg


def cut_images(root, year, split):
    paths = [root / f"VOC{year}" / "JPEGImages" / f"{image_id}.jpg" for image_id in voc_ids(root, split, year)]
    for path in paths:
        path.write_bytes(path.read_bytes()[:300])
    return paths


def test_the_trainers_train_loader_names_an_image_that_fails_to_decode(root):
    from bt_transfer.detection.mapper import ImageReadError
    from bt_transfer.detection.trainer import Trainer

    use_datasets_root(root)
    damaged = cut_images(root, 2007, "trainval") + cut_images(root, 2012, "trainval")
    with pytest.raises(ImageReadError) as error:
        next(iter(Trainer.build_train_loader(smoke_cfg())))
    path, rest = str(error.value).split(" ", 1)
    assert path in map(str, damaged)
    assert rest.startswith(f"(image {os.path.basename(path)[:-4]}): cannot read this image during the run (OSError: ")


@pytest.mark.parametrize("workers", [0, 1])
def test_the_trainers_test_loader_names_an_image_that_fails_to_decode(root, workers):
    """From a DataLoader worker too, the error is one line that starts with the path."""
    from bt_transfer.detection.mapper import ImageReadError
    from bt_transfer.detection.trainer import Trainer

    use_datasets_root(root)
    first = root / "VOC2007" / "JPEGImages" / f"{voc_ids(root, 'test')[0]}.jpg"
    first.write_text("not an image")
    loader = Trainer.build_test_loader(smoke_cfg("DATALOADER.NUM_WORKERS", str(workers)), "voc_2007_test")
    with pytest.raises(ImageReadError) as error:
        next(iter(loader))
    assert str(error.value).startswith(f"{first} (image {first.stem}): cannot read this image during the run "
                                       "(UnidentifiedImageError: cannot identify image file")
    assert "\n" not in str(error.value)


def test_a_data_error_is_not_hidden_by_the_precise_bn_hooks_left_behind():
    """fvcore's update_bn_stats leaves its hooks on when its loader fails; the evaluation Detectron2 runs
    after a failed last step then fails on them with an AssertionError that hides the data error."""
    import torch
    from fvcore.nn.precise_bn import update_bn_stats

    from bt_transfer.detection.mapper import ImageReadError, data_error_first

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    batch = torch.ones(1, 3, 8, 8)

    def loader():
        yield batch
        raise ImageReadError("/data/x.jpg (image x): cannot read this image during the run")

    def train_then_evaluate():
        try:
            update_bn_stats(model, loader(), num_iters=2)
        finally:
            model(batch)

    with pytest.raises(AssertionError, match="Some BN layers are reused"):
        train_then_evaluate()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    with pytest.raises(ImageReadError, match="^/data/x.jpg "):
        with data_error_first():
            train_then_evaluate()


def test_an_image_damaged_during_training_stops_the_run_naming_it_not_precise_bn(root, tmp_path, monkeypatch):
    """The issue's case: training images damaged after the last step are met first by PreciseBN."""
    import torch
    import torchvision
    from detectron2.engine import HookBase, hooks

    from bt_transfer.convert.detectron2 import convert_file
    from bt_transfer.detection import protocol, trainer as train_net
    from bt_transfer.detection.mapper import ImageReadError

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "resnet50.pth")
    weights = convert_file(tmp_path / "resnet50.pth", tmp_path / "backbone.pkl")["output"]
    for year, split, keep in ((2007, "trainval", 2), (2012, "trainval", 2), (2007, "test", 2)):
        split_list = root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt"
        split_list.write_text("\n".join(voc_ids(root, split, year)[:keep]) + "\n")

    class DamageTrainingImages(HookBase):
        def after_step(self):
            self.damaged = cut_images(root, 2007, "trainval") + cut_images(root, 2012, "trainval")

    damage = DamageTrainingImages()

    class Trainer(train_net.Trainer):
        def build_hooks(self):
            built = super().build_hooks()
            built.insert(next(i for i, h in enumerate(built) if isinstance(h, hooks.PreciseBN)), damage)
            return built

    monkeypatch.setattr(train_net, "Trainer", Trainer)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    args = train_net.argument_parser().parse_args([
        "--config-file", str(protocol.CONFIGS["voc"]), "--num-gpus", "0", *protocol.SMOKE_OPTS,
        "SOLVER.MAX_ITER", "1", "TEST.PRECISE_BN.NUM_ITER", "1", "MODEL.WEIGHTS", weights,
        "OUTPUT_DIR", str(tmp_path / "run")])
    with pytest.raises(ImageReadError) as error:
        train_net.main(args)
    assert str(error.value).split(" ", 1)[0] in map(str, damage.damaged)
