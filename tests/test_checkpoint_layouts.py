"""Every checkpoint layout the suite reads, each built from the key layout its repository publishes.

Each fixture wraps one shared random ResNet-50 (BatchNorm statistics far from identity) in the containers,
prefixes and non-backbone parts its release has, with any second network (momentum encoder, student, EMA)
holding other values, so that reading the wrong one shows. Nothing is downloaded. Each file goes through
``read_resnet50`` (``torch.load(weights_only=True)``) and must give exactly the arrays of the torchvision state
dict; a file two layouts read, a stray key, a copy that differs are errors that name them.
"""
import argparse

import numpy as np
import pytest
import torch

from bt_transfer.convert.__main__ import main
from bt_transfer.convert.detectron2 import to_detectron2
from bt_transfer.convert.formats import FORMATS, read_resnet50, trunk_of
from bt_transfer.convert.layouts import LAYOUTS
from bt_transfer.convert.resnet50 import ConversionError
from pretrain.evaluate import load_backbone


@pytest.fixture(scope="module")
def state_dict(resnet50):
    """A torchvision ResNet-50 state dict (with fc and num_batches_tracked), BatchNorm far from identity."""
    return resnet50.state_dict()


@pytest.fixture(scope="module")
def reference(state_dict):
    return to_detectron2(trunk_of(state_dict, "torchvision")[1])


# --- Building blocks of the published layouts ---------------------------------------------------

def trunk(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def fc(sd):
    return {k: v for k, v in sd.items() if k.startswith("fc.")}


def under(prefix, weights):
    return {prefix + k: v for k, v in weights.items()}


def other_values(weights):
    """The same keys and shapes with other values (a momentum encoder, a student, an EMA), stored cheaply."""
    return {k: torch.zeros((), dtype=v.dtype).expand_as(v) for k, v in weights.items()}


def head(*names):
    """Non-backbone tensors: their names are what the layout test needs, not their sizes."""
    return {name: torch.zeros(2) for name in names}


def bn(prefix, affine=True):
    return [f"{prefix}.{t}" for t in ("weight", "bias")[:2 * affine] + ("running_mean", "running_var",
                                                                        "num_batches_tracked")]


def mlp(prefix, *layers):
    """Keys of an nn.Sequential MLP: ``L`` a Linear with bias, ``l`` one without, ``B`` a BatchNorm1d, ``b`` an
    affine-free one, ``-`` an activation (no tensors)."""
    keys = []
    for i, kind in enumerate(layers):
        keys += {"L": [f"{prefix}.{i}.weight", f"{prefix}.{i}.bias"], "l": [f"{prefix}.{i}.weight"],
                 "B": bn(f"{prefix}.{i}"), "b": bn(f"{prefix}.{i}", affine=False), "-": []}[kind]
    return head(*keys)


def lightning(state_dict, **extra):
    """A PyTorch Lightning checkpoint as ``Trainer.save_checkpoint`` writes it."""
    return {"epoch": 99, "global_step": 500400, "pytorch-lightning_version": "2.1.0", "state_dict": state_dict,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 100}}}},
            "callbacks": {}, "optimizer_states": [{"state": {}, "param_groups": []}], "lr_schedulers": [],
            **extra}


def ddp(weights):
    return under("module.", weights)


OPTIMIZER = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}


# --- One builder per published layout ---------------------------------------------------------

def official_backbone(sd):  # Barlow Twins / VICReg resnet50.pth, DINO's dino_resnet50_pretrain.pth
    return trunk(sd)


def barlowtwins_checkpoint(sd):  # facebookresearch/barlowtwins main.py: DDP model, projector, bn
    model = under("backbone.", trunk(sd)) | mlp("projector", "l", "B", "-", "l", "B", "-", "l") | head(
        *bn("bn", affine=False))
    return {"epoch": 300, "model": ddp(model), "optimizer": OPTIMIZER}


def moco_v2(sd):  # facebookresearch/moco main_moco.py, MoCo v2 MLP head inside encoder_q.fc
    encoder = trunk(sd) | mlp("fc", "L", "-", "L")
    weights = under("encoder_q.", encoder) | under("encoder_k.", other_values(encoder))
    weights |= {"queue": torch.zeros(128, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": ddp(weights), "optimizer": OPTIMIZER}


def vissl(sd):
    model = {"trunk": under("_feature_blocks.", trunk(sd)), "heads": head("0.clf.0.weight", "0.clf.0.bias")}
    return {"classy_state_dict": {"base_model": {"model": model}}, "phase_idx": 4, "type": "checkpoint"}


def swav_weights(sd):
    return trunk(sd) | mlp("projection_head", "L", "B", "-", "L") | head("prototypes.weight")


def swav_release(sd):  # swav_800ep_pretrain.pth.tar: the DDP state dict itself
    return ddp(swav_weights(sd))


def swav_checkpoint(sd):  # main_swav.py save_dict
    return {"epoch": 800, "state_dict": ddp(swav_weights(sd)), "optimizer": OPTIMIZER,
            "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 0}}}


def dino(sd):  # main_dino.py save_dict: both networks DDP-wrapped (BatchNorm), MultiCropWrapper(backbone, head)
    dino_head = mlp("head.mlp", "L", "-", "L", "-", "L") | head("head.last_layer.weight_g", "head.last_layer.weight_v")
    return {"student": ddp(under("backbone.", other_values(trunk(sd))) | dino_head),
            "teacher": ddp(under("backbone.", trunk(sd)) | dino_head),
            "optimizer": OPTIMIZER, "epoch": 800, "dino_loss": {"center": torch.zeros(1, 60000)},
            "args": argparse.Namespace(arch="resnet50", out_dim=60000, momentum_teacher=0.996, use_bn_in_head=True,
                                       global_crops_scale=(0.14, 1.0), output_dir=".")}


def vicreg(sd):  # main_vicreg.py model.pth / resnet50_fullckpt.pth
    model = under("backbone.", trunk(sd)) | mlp("projector", "L", "B", "-", "L", "B", "-", "l")
    return {"epoch": 1000, "model": ddp(model), "optimizer": OPTIMIZER}


def mocov3(sd):  # main_moco.py + moco/builder.py MoCo_ResNet: 2-layer projector in fc, 2-layer predictor
    projector = mlp("fc", "l", "B", "-", "l", "b")
    weights = (under("base_encoder.", trunk(sd) | projector)
               | under("momentum_encoder.", other_values(trunk(sd)) | projector)
               | mlp("predictor", "l", "B", "-", "l"))
    return {"epoch": 1000, "arch": "resnet50", "state_dict": ddp(weights), "optimizer": OPTIMIZER,
            "scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 0}}


def simsiam(sd):  # main_simsiam.py + simsiam/builder.py: 3-layer projector in encoder.fc
    encoder = trunk(sd) | mlp("fc", "l", "B", "-", "l", "B", "-", "L", "b")
    weights = under("encoder.", encoder) | mlp("predictor", "l", "B", "-", "L")
    return {"epoch": 100, "arch": "resnet50", "state_dict": ddp(weights), "optimizer": OPTIMIZER}


def byol(sd):  # byol-pytorch examples/lightning/train.py: learner = BYOL(resnet50), net registered twice
    projector = mlp("projector.0", "L", "B") | mlp("projector.2", "L", "B", "-", "L")  # SEM embedder, then MLP
    learner = (under("net.", sd) | under("online_encoder.net.", sd) | under("online_encoder.", projector)
               | mlp("online_predictor", "L", "B", "-", "L")
               | under("target_encoder.net.", other_values(sd)) | under("target_encoder.", projector))
    return lightning(under("learner.", learner))


def solo_learn(sd):  # solo/methods/byol.py on BaseMomentumMethod: backbone without fc, online classifier
    weights = (under("backbone.", trunk(sd)) | under("momentum_backbone.", other_values(trunk(sd)))
               | mlp("projector", "L", "B", "-", "L") | mlp("momentum_projector", "L", "B", "-", "L")
               | mlp("predictor", "L", "B", "-", "L") | head("classifier.weight", "classifier.bias"))
    return lightning(weights)


def lightly_benchmark(sd):  # benchmarks/imagenet/resnet50/byol.py: torchvision names, fc = Identity
    weights = (under("backbone.", trunk(sd)) | under("teacher_backbone.", other_values(trunk(sd)))
               | mlp("projection_head.layers", "L", "B", "-", "L")
               | mlp("teacher_projection_head.layers", "L", "B", "-", "L")
               | mlp("prediction_head.layers", "L", "B", "-", "L")
               | head("online_classifier.classification_head.weight", "online_classifier.classification_head.bias"))
    return lightning(weights, hyper_parameters={"batch_size_per_device": 256, "num_classes": 1000})


SEQUENTIAL_INDEX = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def as_sequential(weights):
    """Keys of ``nn.Sequential(*list(resnet.children())[:-1])``: children numbered instead of named."""
    return {SEQUENTIAL_INDEX[k.split(".")[0]] + "." + k.split(".", 1)[1]: v for k, v in weights.items()}


def lightly_example(sd):  # examples/pytorch_lightning/byol.py: Sequential backbone, momentum copies
    backbone = as_sequential(trunk(sd))
    weights = (under("backbone.", backbone) | under("backbone_momentum.", other_values(backbone))
               | mlp("projection_head.layers", "L", "B", "-", "L")
               | mlp("projection_head_momentum.layers", "L", "B", "-", "L")
               | mlp("prediction_head.layers", "L", "B", "-", "L"))
    return lightning(weights)


def mmselfsup_v1(sd):  # 1.x MoCo v2: encoder_k = ExponentialMovingAverage(Sequential(backbone, neck))
    neck = mlp("mlp", "L", "-", "L")
    weights = (under("backbone.", trunk(sd)) | under("neck.", neck)
               | under("encoder_k.module.0.", other_values(trunk(sd))) | under("encoder_k.module.1.", neck)
               | {"encoder_k.steps": torch.tensor([200]), "queue": torch.zeros(128, 64),
                  "queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"meta": {"mmengine_version": "0.7.0", "epoch": 200, "iter": 1000800, "seed": 0,
                     "cfg": "model = dict(type='MoCo', queue_len=65536, feat_dim=128, momentum=0.001)"},
            "state_dict": weights}


def mmselfsup_v0(sd):  # 0.x MoCo: encoder_q = Sequential(backbone, neck), and self.backbone = encoder_q[0]
    neck = mlp("mlp", "L", "-", "L")
    weights = (under("encoder_q.0.", trunk(sd)) | under("encoder_q.1.", neck)
               | under("encoder_k.0.", other_values(trunk(sd))) | under("encoder_k.1.", neck)
               | under("backbone.", trunk(sd)) | under("neck.", neck)
               | {"queue": torch.zeros(128, 64), "queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"meta": {"mmcv_version": "1.4.0", "epoch": 200, "iter": 1000800, "config": "model = dict(type='MoCo')"},
            "state_dict": weights, "optimizer": OPTIMIZER}


def mmselfsup_backbone(sd):  # tools/model_converters/extract_backbone_weights.py
    return {"state_dict": trunk(sd), "author": "MMSelfSup"}


def timm(sd):  # timm/utils/checkpoint_saver.py without model EMA
    return {"epoch": 299, "arch": "resnet50", "state_dict": sd, "optimizer": OPTIMIZER, "version": 2,
            "args": argparse.Namespace(model="resnet50", lr=5e-3, model_ema=False, input_size=(3, 224, 224)),
            "metric": 80.4}


def timm_with_ema(sd):  # the same with --model-ema: the EMA weights beside the model's
    return timm(sd) | {"state_dict_ema": other_values(sd)}


SWAV_HEADS = {"projection_head", "prototypes"}
# case: (builder, format auto must find, non-backbone parts it must drop besides the BatchNorm counters)
CASES = {
    "barlowtwins": (official_backbone, "barlowtwins", set()),
    "barlowtwins-ddp": (lambda sd: ddp(trunk(sd)), "barlowtwins", set()),
    "checkpoint": (barlowtwins_checkpoint, "checkpoint", {"projector", "bn"}),
    "torchvision": (lambda sd: sd, "torchvision", {"fc"}),
    "moco": (moco_v2, "moco", {"encoder_q.fc", "encoder_k", "queue", "queue_ptr"}),
    "vissl": (vissl, "vissl", set()),
    "swav": (swav_release, "swav", SWAV_HEADS),
    "swav-checkpoint": (swav_checkpoint, "swav-checkpoint", SWAV_HEADS),
    "dino": (dino, "dino", {"head"}),
    "vicreg": (vicreg, "vicreg", {"projector"}),
    "mocov3": (mocov3, "mocov3", {"base_encoder.fc", "momentum_encoder", "predictor"}),
    "simsiam": (simsiam, "simsiam", {"encoder.fc", "predictor"}),
    "byol": (byol, "byol", {"learner.net.fc", "learner.online_encoder.net", "learner.online_encoder.projector",
                            "learner.online_predictor", "learner.target_encoder"}),
    "solo-learn": (solo_learn, "solo-learn", {"momentum_backbone", "projector", "momentum_projector", "predictor",
                                              "classifier"}),
    "lightly": (lightly_benchmark, "lightly", {"teacher_backbone", "projection_head", "teacher_projection_head",
                                               "prediction_head", "online_classifier"}),
    "lightly-sequential": (lightly_example, "lightly", {"backbone_momentum", "projection_head",
                                                        "projection_head_momentum", "prediction_head"}),
    "mmselfsup": (mmselfsup_v1, "mmselfsup", {"neck", "encoder_k", "queue", "queue_ptr"}),
    "mmselfsup-0.x": (mmselfsup_v0, "mmselfsup", {"encoder_q.0", "encoder_q.1", "encoder_k", "neck", "queue",
                                                  "queue_ptr"}),
    "mmselfsup-backbone": (mmselfsup_backbone, "mmselfsup-backbone", set()),
    "timm": (timm, "timm", {"fc"}),
}


def test_every_format_has_a_case():
    """timm-ema is read only when named: every checkpoint holding it also holds the model (below)."""
    assert {fmt for _, fmt, _ in CASES.values()} | {"timm-ema"} == set(FORMATS) == set(LAYOUTS)


@pytest.mark.parametrize("case", CASES)
def test_each_layout_is_recognised_and_gives_the_torchvision_arrays(case, state_dict, reference, tmp_path):
    build, expected_format, parts = CASES[case]
    torch.save(build(state_dict), tmp_path / "checkpoint.pth")
    fmt, trunk_read, dropped = read_resnet50(tmp_path / "checkpoint.pth")
    assert fmt == expected_format
    arrays = to_detectron2(trunk_read)
    assert arrays.keys() == reference.keys()
    assert all(np.array_equal(arrays[k], reference[k]) for k in reference)
    assert dropped.keys() == parts | {"num_batches_tracked"}


def test_a_file_two_layouts_read_is_refused_naming_both(state_dict, reference, tmp_path):
    """A timm checkpoint with EMA holds two ResNet-50s: timm's validate.py reads one, its load_state_dict the other."""
    path = tmp_path / "timm_ema.pth"
    torch.save(timm_with_ema(state_dict), path)
    with pytest.raises(ConversionError, match=r"(?s)matches 2 known layouts:\n  timm .*\n  timm-ema .*--format"):
        read_resnet50(path)
    model = to_detectron2(read_resnet50(path, "timm")[1])
    assert all(np.array_equal(model[k], reference[k]) for k in reference)
    ema = read_resnet50(path, "timm-ema")[1]
    assert all(not v.any() for v in ema.values())  # the EMA copy, not the model


def test_a_named_format_reads_its_structure_only(state_dict, reference):
    with pytest.raises(ConversionError, match=r"no \['state_dict'\] entry, which a 'moco' checkpoint has"):
        trunk_of(vissl(state_dict), "moco")
    fc_left_in = r"(?s)as 'barlowtwins': does not match the ResNet-50 trunk.*unexpected \(2\): fc\.bias, fc\.weight"
    with pytest.raises(ConversionError, match=fc_left_in):
        trunk_of(state_dict, "barlowtwins")
    # The parts that tell layouts apart for auto (here fc) need not be there when the format is named.
    arrays = to_detectron2(trunk_of(trunk(state_dict), "torchvision")[1])
    assert all(np.array_equal(arrays[k], reference[k]) for k in reference)


def _with_stray(obj, fmt):
    """``obj`` with one more tensor in the state dict its layout reads, named as its other keys are wrapped."""
    state_dict = obj
    for key in LAYOUTS[fmt].path:
        state_dict = state_dict[key]
    stray = "module.stray.weight" if all(k.startswith("module.") for k in state_dict) else "stray.weight"
    state_dict[stray] = torch.zeros(3)
    return obj, stray


@pytest.mark.parametrize("case", CASES)
def test_a_stray_key_fails_naming_it(case, state_dict):
    build, fmt, _ = CASES[case]
    obj, stray = _with_stray(build(dict(state_dict)), fmt)
    # Outside the trunk prefix, the layout names it as the file does; under it (a top-level trunk), the
    # ResNet-50 check names it as a trunk tensor.
    named = r"unexpected \(1\): (module\.)?stray\.weight$"
    with pytest.raises(ConversionError, match=rf"^no known layout accounts for every key of the file; the closest "
                                              rf"is '{fmt}': (?s:.*){named}"):
        trunk_of(obj)
    with pytest.raises(ConversionError, match=named):
        trunk_of(obj, fmt)


def test_layouts_equally_close_are_listed_with_what_each_leaves(state_dict):
    odd = trunk(state_dict) | {"fc.weight": state_dict["fc.weight"], "prototypes.weight": torch.zeros(2)}
    with pytest.raises(ConversionError, match=r"the closest:\n  'torchvision' \(trunk at the top, fc\) leaves "
                                              r"unexplained \(1\): prototypes\.weight\n  'swav' .* leaves "
                                              r"unexplained \(1\): fc\.weight$"):
        trunk_of(odd)


def test_a_copy_of_the_trunk_must_equal_it(state_dict):
    obj = mmselfsup_v0(state_dict)
    obj["state_dict"]["encoder_q.0.layer3.1.conv2.weight"] = torch.zeros(256, 256, 3, 3)
    with pytest.raises(ConversionError, match=r"registers its trunk twice.*\n  differing \(1\): "
                                              r"encoder_q\.0\.layer3\.1\.conv2\.weight"):
        trunk_of(obj)


def test_sequential_and_torchvision_names_of_one_tensor_clash(state_dict):
    obj = lightly_example(state_dict)
    obj["state_dict"]["backbone.conv1.weight"] = state_dict["conv1.weight"]
    clash = r"same trunk tensor.*\n  clashing \(1\): backbone\.conv1\.weight$"
    with pytest.raises(ConversionError, match=rf"the closest is 'lightly': keys that name the {clash}"):
        trunk_of(obj)
    with pytest.raises(ConversionError, match=clash):
        trunk_of(obj, "lightly")


def test_an_unknown_file_lists_what_it_holds_and_the_formats():
    vit = {"cls_token": torch.zeros(1, 1, 384), "blocks.0.attn.qkv.weight": torch.zeros(2), "head.mlp.0.weight":
           torch.zeros(2)}
    with pytest.raises(ConversionError, match=r"not a recognised ResNet-50 checkpoint \(top-level keys: args, "
                                              r"epoch, student, teacher; \['student'\] holds tensors cls_token\* "
                                              r"\(1\), blocks\* \(1\), head\* \(1\); .*known formats: barlowtwins, "
                                              r"checkpoint, .*, timm-ema"):
        trunk_of({"student": vit, "teacher": vit, "epoch": 3, "args": None})


class _RunsCode:
    """Unpickling this calls ``open(path, "w")``: a visible side effect if the loader ever ran it."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_loading_builds_argparse_options_but_nothing_that_runs_code(tmp_path):
    """DINO and timm keep their options in an argparse.Namespace (read above); what it holds is still checked."""
    path = tmp_path / "args.pth"
    torch.save({"args": argparse.Namespace(hook=_RunsCode(tmp_path / "ran")), "state_dict": {}}, path)
    with pytest.raises(ConversionError, match=r"refused: unpickling it would import and call io\.open"):
        read_resnet50(path)
    assert not (tmp_path / "ran").exists()


def test_help_lists_every_format_with_its_source(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # whitespace normalised
    for name, layout in LAYOUTS.items():
        assert f"{name} {layout.summary} source: {layout.source}" in text


def test_the_imagenet_evaluation_reads_the_same_layouts(state_dict, tmp_path):
    path = tmp_path / "dino_full.pth"
    torch.save(dino(state_dict), path)
    model, _, fmt = load_backbone(path)
    assert fmt == "dino"
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in trunk(state_dict).items())
