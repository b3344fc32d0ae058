"""Generated datasets: deterministic, in the real layouts, learnable, and never half-written."""
import json
import shutil
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from bt_transfer.datasets import synthetic
from bt_transfer.core.fileio import sha256_file


def _digests(root):
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_through_the_cli(generated_data, tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path / "again"), "--seed", "0", "--size", "128"]) == 0
    assert "VOC2007 90 images" in capsys.readouterr().out
    again = _digests(tmp_path / "again")
    assert again == _digests(generated_data)
    assert len(again) > 600


def test_another_seed_gives_other_images(generated_data, tmp_path):
    other = synthetic.generate(tmp_path / "other", seed=1, size=64)
    first = sorted((generated_data / "VOC2007" / "JPEGImages").iterdir())[0]
    assert sha256_file(first) != sha256_file(other / "VOC2007" / "JPEGImages" / first.name)
    assert all(48 <= side <= 80 for side in Image.open(other / "VOC2007" / "JPEGImages" / first.name).size)


def test_imagenet_folder_has_synset_classes_and_class_named_files(generated_data):
    root = generated_data / "imagenet"
    train = sorted(p.name for p in (root / "train").iterdir())
    assert train == sorted(p.name for p in (root / "val").iterdir()) == [f"n{i:08d}" for i in range(1, 11)]
    for split, per_class in (("train", 26), ("val", 10)):
        for synset in train:
            files = sorted(p.name for p in (root / split / synset).iterdir())
            assert files == sorted(f"{synset}_{i}.JPEG" for i in range(per_class))
    assert [line.split()[0] for line in (root / "synsets.txt").read_text().splitlines()] == train


def _hue_histogram(image, bins=36):
    """Hue of the saturated pixels: colour is one of each class's cues and needs no training to read."""
    hsv = np.asarray(image.convert("HSV"), dtype=np.int64).reshape(-1, 3)
    hues = hsv[hsv[:, 1] > 120, 0]
    histogram = np.bincount(hues * bins // 256, minlength=bins).astype(float)
    return histogram / max(histogram.sum(), 1.0)


def test_imagenet_classes_are_separable_by_a_linear_rule_fit_on_train(generated_data):
    root = generated_data / "imagenet"
    synsets = sorted(p.name for p in (root / "train").iterdir())

    def features(split):
        return [(label, _hue_histogram(Image.open(path)))
                for label, synset in enumerate(synsets) for path in sorted((root / split / synset).iterdir())]

    train, val = features("train"), features("val")
    centroids = np.stack([np.mean([f for label, f in train if label == c], axis=0) for c in range(len(synsets))])
    # Nearest centroid under the dot product is a linear classifier fit on train only.
    correct = [int(np.argmax(centroids @ f)) == label for label, f in val]
    assert np.mean(correct) >= 0.9  # chance is 0.1


def _voc_objects(folder, file_id):
    tree = ET.parse(folder / "Annotations" / f"{file_id}.xml")
    size = {key: int(tree.find(f"size/{key}").text) for key in ("width", "height", "depth")}
    objects = [{"name": obj.find("name").text, "difficult": int(obj.find("difficult").text),
                "truncated": int(obj.find("truncated").text), "pose": obj.find("pose").text,
                "box": [int(obj.find(f"bndbox/{k}").text) for k in ("xmin", "ymin", "xmax", "ymax")]}
               for obj in tree.findall("object")]
    return tree.find("filename").text, size, objects


@pytest.mark.parametrize("year, splits", [(2007, {"trainval": 60, "test": 30}), (2012, {"trainval": 60})])
def test_voc_has_the_pascal_layout_with_1_based_inclusive_boxes(generated_data, year, splits):
    folder = generated_data / f"VOC{year}"
    lists = {p.stem: p.read_text().split() for p in (folder / "ImageSets" / "Main").iterdir()}
    assert set(lists) == set(splits) | {"train", "val"}
    assert {s: len(ids) for s, ids in lists.items() if s in splits} == splits
    assert sorted(lists["train"] + lists["val"]) == sorted(lists["trainval"])
    if year == 2007:
        assert not set(lists["trainval"]) & set(lists["test"])
    flags = {"difficult": set(), "truncated": set()}
    for split in splits:
        names = set()
        for file_id in lists[split]:
            filename, size, objects = _voc_objects(folder, file_id)
            assert filename == f"{file_id}.jpg"
            assert Image.open(folder / "JPEGImages" / filename).size == (size["width"], size["height"])
            assert 96 <= size["width"] <= 160 and 96 <= size["height"] <= 160 and size["depth"] == 3
            assert 1 <= len(objects) <= 3
            for obj in objects:
                xmin, ymin, xmax, ymax = obj["box"]
                assert 1 <= xmin < xmax <= size["width"] and 1 <= ymin < ymax <= size["height"]
                assert obj["pose"] == "Unspecified"
                if not obj["difficult"]:
                    names.add(obj["name"])
                for key in flags:
                    flags[key].add(obj[key])
        assert names == set(synthetic.VOC_CLASSES)  # each class scorable: evaluators skip difficult ones
    assert flags == {"difficult": {0, 1}, "truncated": {0, 1}}


def test_voc_objects_are_told_apart_by_their_own_pixels(generated_data):
    """The colour inside each box names its class for most objects: detection can beat chance."""
    folder = generated_data / "VOC2007"
    samples = []
    for file_id in (folder / "ImageSets" / "Main" / "trainval.txt").read_text().split():
        image = Image.open(folder / "JPEGImages" / f"{file_id}.jpg")
        for obj in _voc_objects(folder, file_id)[2]:
            xmin, ymin, xmax, ymax = obj["box"]
            crop = image.crop((xmin - 1, ymin - 1, xmax, ymax))
            samples.append((synthetic.VOC_CLASSES.index(obj["name"]), _hue_histogram(crop)))
    train, held_out = samples[0::2], samples[1::2]
    seen = sorted({label for label, _ in train})
    centroids = {c: np.mean([f for label, f in train if label == c], axis=0) for c in seen}
    scored = [(label, max(seen, key=lambda c: centroids[c] @ f)) for label, f in held_out if label in centroids]
    # Crops hold background too and some objects are tiny, so not every one is right; chance is 1/20.
    assert np.mean([label == guess for label, guess in scored]) >= 0.7


def test_coco_jsons_use_the_real_80_categories_and_a_handful_of_them(generated_data):
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    real = [(c["id"], c["name"]) for c in COCO_CATEGORIES if c["isthing"]]
    for split, count in (("train2017", 60), ("val2017", 30)):
        data = json.loads((generated_data / "coco" / "annotations" / f"instances_{split}.json").read_text())
        assert [(c["id"], c["name"]) for c in data["categories"]] == real
        assert len(data["images"]) == count
        assert {a["category_id"] for a in data["annotations"]} == set(synthetic.COCO_USED_IDS)
        for image in data["images"]:
            assert Image.open(generated_data / "coco" / split / image["file_name"]).size == (
                image["width"], image["height"])
        # COCO's APs/APm/APl are undefined for an area range without ground truth (small < 32^2 <= medium < 96^2).
        areas = [a["area"] for a in data["annotations"]]
        assert min(areas) < 32**2 and any(32**2 <= a < 96**2 for a in areas) and max(areas) >= 96**2, split


def test_existing_generation_is_reused_and_anything_else_is_refused(generated_data, tmp_path):
    stamp = (generated_data / synthetic.MANIFEST).stat().st_mtime_ns
    assert synthetic.generate(generated_data) == generated_data
    assert (generated_data / synthetic.MANIFEST).stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match=r"seed=3, size=128"):
        synthetic.generate(generated_data, seed=3)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=str(tmp_path / "mine")):
        synthetic.generate(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as exit_info:
        synthetic.main(["--out", str(tmp_path / "tiny"), "--size", "8"])
    assert exit_info.value.code == 2 and not (tmp_path / "tiny").exists()


def test_an_interrupted_generation_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "write_voc", interrupted)  # after the ImageNet tree is written
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(tmp_path / "data")
    assert list(tmp_path.iterdir()) == []


def test_a_generation_finished_concurrently_by_another_process_is_accepted(generated_data, tmp_path, monkeypatch):
    write_coco = synthetic.write_coco

    def another_process_finishes_first(*args):
        shutil.copytree(generated_data, tmp_path / "data")
        return write_coco(*args)

    monkeypatch.setattr(synthetic, "write_coco", another_process_finishes_first)
    assert synthetic.generate(tmp_path / "data") == tmp_path / "data"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # our own staging tree is gone
    assert _digests(tmp_path / "data") == _digests(generated_data)
