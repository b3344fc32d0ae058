"""The ResNet-50 -> Detectron2 C4 converter: equal forward passes, the CLI, every bad input.

The heart is the equivalence test: a torchvision ResNet-50 with random weights and random
BatchNorm statistics, converted and loaded into the C4 model built from the suite's own VOC
config, computes the same res4 and res5 features as torchvision on the same image, through
Detectron2's own preprocessing. That proves the key mapping, ``STRIDE_IN_1X1: False``, the RGB
order and the pixel mean/std together. SyncBN needs no process group here: in eval mode it is
plain BatchNorm with the running statistics.
"""
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import bt_transfer.detection.roi_heads  # noqa: F401  (registers Res5ROIHeadsExtraNorm)
from bt_transfer.convert.__main__ import main
from bt_transfer.convert.detectron2 import convert_file, to_detectron2
from bt_transfer.convert.formats import trunk_of
from bt_transfer.convert.resnet50 import ConversionError
from bt_transfer.detection.weights import FROM_SCRATCH, WeightsLoadError, load_backbone_weights
from bt_transfer.core.fileio import sha256_file
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from pretrain.barlow_twins import BarlowTwins
from pretrain.checkpoint import save_checkpoint

CONFIGS = Path(__file__).resolve().parent.parent / "detection_configs"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIDE = 224  # res4 is SIDE/16 = 14 cells a side, the C4 head's POOLER_RESOLUTION (checked below)


@pytest.fixture(scope="module")
def state_dict(resnet50):
    return resnet50.state_dict()  # torchvision format: with fc and num_batches_tracked


@pytest.fixture(scope="module")
def reference(state_dict):
    return to_detectron2(trunk_of(state_dict, "torchvision")[1])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="module")
def tv_file(workdir, state_dict):
    path = workdir / "resnet50_torchvision.pth"
    torch.save(state_dict, path)
    return path


@pytest.fixture(scope="module")
def converted(workdir, tv_file):
    return Path(convert_file(tv_file, workdir / "converted.pkl")["output"])


def build_c4(config, **overrides):
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *[x for kv in overrides.items() for x in kv]])
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def voc_model():
    return build_c4("voc_R_50_C4_24k.yaml")


def max_relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@torch.no_grad()
def c4_features(model, image_file):
    """(normalised input, res4, whole-image-pooled res4, res5 without the extra norm) of the C4 model,
    the image read the way Detectron2's dataset mapper reads it (in the config's INPUT.FORMAT)."""
    image = read_image(str(image_file), format=model.input_format)
    images = model.preprocess_image([{"image": torch.as_tensor(image.transpose(2, 0, 1).copy()).float()}])
    res4 = model.backbone(images.tensor)["res4"]
    pooled = model.roi_heads.pooler([res4], [Boxes(torch.tensor([[0.0, 0.0, SIDE, SIDE]]))])
    blocks = [block for name, block in model.roi_heads.res5.named_children() if name != "norm"]
    return images.tensor, res4, pooled, torch.nn.Sequential(*blocks)(pooled)


@torch.no_grad()
def torchvision_features(model, image_file):
    """(normalised input, layer3, layer4) read as torchvision's ImageFolder reads (PIL, RGB), ImageNet-normalised."""
    image = torchvision.transforms.functional.pil_to_tensor(Image.open(image_file).convert("RGB"))
    x = torchvision.transforms.functional.normalize(image[None].float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    layer3 = model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))))
    return x, layer3, model.layer4(layer3)


@pytest.fixture(scope="module")
def image(workdir):
    """A lossless RGB noise image: its three channels differ, so a channel-order mistake shows."""
    pixels = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    path = workdir / "image.png"
    Image.fromarray(pixels, "RGB").save(path)
    return path


def test_converted_c4_model_computes_torchvision_features(resnet50, converted, voc_model, image):
    not_loaded = load_backbone_weights(voc_model, converted)
    # RPN conv/objectness/deltas, box predictor cls/bbox (weight + bias each), res5.norm (4 tensors).
    assert len(not_loaded) == 14 and all(k.startswith(FROM_SCRATCH) for k in not_loaded)
    assert {"roi_heads.res5.norm.running_var", "roi_heads.box_predictor.cls_score.weight",
            "proposal_generator.rpn_head.objectness_logits.weight"} <= set(not_loaded)

    x, layer3, layer4 = torchvision_features(resnet50, image)
    normalised, res4, pooled, res5 = c4_features(voc_model, image)
    torch.testing.assert_close(normalised, x, rtol=0, atol=1e-5)  # INPUT.FORMAT, PIXEL_MEAN/STD == torchvision's
    assert res4.shape == pooled.shape == (1, 1024, SIDE // 16, SIDE // 16)
    # ROIAlignV2 (half-pixel aligned) on a whole-image box, one sample per bin, output = feature
    # size: each sample falls exactly on a cell centre, so pooling is the identity.
    torch.testing.assert_close(pooled, res4, rtol=0, atol=0)
    assert max_relative_error(res4, layer3) < 1e-5
    assert max_relative_error(res5, layer4) < 1e-5


def test_stride_in_1x1_true_would_be_caught(resnet50, converted, image):
    """The comparison above can fail: the MSRA-style stride placement gives other features."""
    model = build_c4("voc_R_50_C4_24k.yaml", **{"MODEL.RESNETS.STRIDE_IN_1X1": "True"})
    load_backbone_weights(model, converted)
    _, layer3, _ = torchvision_features(resnet50, image)
    assert max_relative_error(c4_features(model, image)[1], layer3) > 0.05


def test_coco_mask_model_leaves_only_heads_uninitialised(converted):
    not_loaded = load_backbone_weights(build_c4("coco_R_50_C4_1x.yaml"), converted)
    heads = {k.split(".")[1] for k in not_loaded}
    assert heads == {"rpn_head", "box_predictor", "mask_head", "res5"}
    assert all(k.startswith(FROM_SCRATCH) for k in not_loaded)


# --- Our pretraining checkpoint through the CLI (every layout: test_checkpoint_layouts.py) --------

@pytest.fixture(scope="module")
def barlow_twins(state_dict):
    """The real pretrain.barlow_twins model (small projector) holding the reference backbone."""
    model = BarlowTwins(projector="32-32")
    model.backbone.load_state_dict({k: v for k, v in state_dict.items() if not k.startswith("fc.")})
    return model


def test_cli_converts_our_pretraining_checkpoint(workdir, barlow_twins, reference):
    src, dst = workdir / "checkpoint.pth", workdir / "cli" / "bt.pkl"
    save_checkpoint(src, step=120, steps_per_epoch=40, global_batch=8, projector="32-32", model=barlow_twins,
                    optimizer=torch.optim.SGD(barlow_twins.parameters(), lr=0.1),
                    scaler=torch.amp.GradScaler("cpu", enabled=False))
    out = subprocess.run([sys.executable, "-m", "bt_transfer.convert", str(src), str(dst)],
                         capture_output=True, text=True, check=True).stdout
    assert "format      checkpoint" in out and "23,508,032 parameters" in out  # ResNet-50 without fc
    assert f"sha256 {sha256_file(src)}" in out and f"sha256 {sha256_file(dst)}" in out
    with open(dst, "rb") as f:
        written = pickle.load(f)
    assert written["matching_heuristics"] is True and "__author__" in written
    assert written["model"].keys() == reference.keys()
    assert all(np.array_equal(written["model"][k], reference[k]) for k in reference)


# --- Bad inputs --------------------------------------------------------------------------------

class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: a visible side effect if the loader ever ran it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _without(state_dict, prefix):
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix)}


def _corrupted(state_dict):
    bad = dict(state_dict)
    bad["layer2.1.conv2.weight"] = state_dict["layer2.1.conv2.weight"].clone()
    bad["layer2.1.conv2.weight"][0, 0, 0, 0] = float("nan")
    bad["layer4.0.bn3.running_var"] = torch.full_like(state_dict["layer4.0.bn3.running_var"], float("inf"))
    return bad


BAD_INPUTS = {
    "truncated": (lambda path, sd, tv_file: path.write_bytes(tv_file.read_bytes()[: tv_file.stat().st_size // 2]),
                  r"not a readable PyTorch checkpoint \(truncated"),
    "text": (lambda path, sd, tv_file: path.write_text("not a checkpoint\n"), r"not a readable PyTorch checkpoint"),
    "list": (lambda path, sd, tv_file: torch.save([torch.zeros(3)], path), r"not a checkpoint: holds a list"),
    "resnet18": (lambda path, sd, tv_file: torch.save(torchvision.models.resnet18().state_dict(), path),
                 r"\(2, 2, 2, 2\) basic blocks per stage, like ResNet-18"),
    "missing-layer": (lambda path, sd, tv_file: torch.save(_without(sd, "layer4.2."), path),
                      r"(?s)\(3, 4, 6, 2\) bottleneck blocks per stage; .*missing \(15\): layer4\.2\.bn1\.bias"),
    "nan": (lambda path, sd, tv_file: torch.save(_corrupted(sd), path),
            r"(?s)NaN or Inf.*non-finite \(2\): layer2\.1\.conv2\.weight, layer4\.0\.bn3\.running_var"),
    "runs-code": (lambda path, sd, tv_file: torch.save({"model": _RunsCode(path.with_suffix(".ran"))}, path),
                  r"refused: unpickling it would import and call io\.open, which could run arbitrary code"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_fails_clearly_and_writes_nothing(case, tmp_path, state_dict, tv_file):
    write, message = BAD_INPUTS[case]
    src, dst = tmp_path / f"{case}.pth", tmp_path / "out" / "weights.pkl"
    write(src, state_dict, tv_file)
    with pytest.raises(ConversionError, match=message) as error:
        convert_file(src, dst)
    assert str(error.value).startswith(str(src))  # names the file
    assert not dst.parent.exists() or not os.listdir(dst.parent)  # no output, no temporary file
    assert not src.with_suffix(".ran").exists()


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    (tmp_path / "x.pth").write_text("hello")
    with pytest.raises(SystemExit, match=r"^error: .*x\.pth: not a readable PyTorch checkpoint"):
        main([str(tmp_path / "x.pth"), str(tmp_path / "x.pkl")])
    with pytest.raises(ConversionError, match=r"must end in \.pkl"):
        convert_file(tmp_path / "x.pth", tmp_path / "x.pth.out")


# --- Loading into Detectron2: nothing silently skipped -----------------------------------------

def _edited(converted, path, edit):
    with open(converted, "rb") as f:
        checkpoint = pickle.load(f)
    edit(checkpoint["model"])
    with open(path, "wb") as f:
        pickle.dump(checkpoint, f)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("res4.5.conv3.norm.running_var"),
     r"not initialised \(1\): backbone\.res4\.5\.conv3\.norm\.running_var"),
    (lambda m: m.update({"res6.0.conv1.weight": np.zeros((8, 8, 1, 1), np.float32)}),
     r"not used \(1\): res6\.0\.conv1\.weight"),
    (lambda m: m.update({"res5.0.conv1.weight": np.zeros((8, 8, 1, 1), np.float32)}),
     r"(?s)not initialised \(1\): roi_heads\.res5\.0\.conv1\.weight.*not used \(1\): res5\.0\.conv1\.weight"),
], ids=["missing", "unused", "mis-shaped"])
def test_loading_fails_on_anything_but_the_heads(edit, message, converted, voc_model, tmp_path):
    with pytest.raises(WeightsLoadError, match=message):
        load_backbone_weights(voc_model, _edited(converted, tmp_path / "edited.pkl", edit))


def _pickled(obj):
    """A writer of ``obj`` pickled (protocol 2, as Detectron2's model zoo) to the given path."""
    return lambda path, tv_file: path.write_bytes(pickle.dumps(obj, protocol=2)) and path


@pytest.mark.parametrize("write, message", [
    (lambda path, tv_file: tv_file, r"convert the checkpoint first"),
    (_pickled({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32)}}), r"not Detectron2-format weights"),
    (_pickled({"model": _RunsCode("/nonexistent/ran"), "__author__": "x"}),
     r"refused: it would import and call io\.open"),
    (lambda path, tv_file: path.write_bytes(b"\x80\x04") and path, r"not a readable pickle"),
    (lambda path, tv_file: path.write_text("not a pickle") and path, r"not a readable pickle"),
], ids=["pth", "caffe2", "runs-code", "truncated", "text"])
def test_loading_refuses_what_is_not_converted_weights(write, message, tmp_path, tv_file, voc_model):
    with pytest.raises(WeightsLoadError, match=message):
        load_backbone_weights(voc_model, write(tmp_path / "weights.pkl", tv_file))
