"""The weights behind a record (bt_transfer.core.provenance): every pretraining setting that departs from the
paper's run is a deviation, and so are supervised weights other than the paper's torchvision V1 ResNet-50."""
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pytest
import torchvision

from bt_transfer.core import fileio, provenance
from pretrain.train import parse_args


def pretraining_record(*options, world_size=1):
    """What pretrain.train writes into args.json for these options (the keys provenance reads)."""
    args = parse_args(["--data", "d", "--out", "o", *options])
    return {**{k: str(v) if k in ("data", "out") else v for k, v in vars(args).items()}, "world_size": world_size,
            "code_version": "v1", "amp_dtype": "bfloat16"}


def test_pretraining_defaults_are_the_papers_run():
    args = parse_args(["--data", "d", "--out", "o"])
    assert {key: getattr(args, key) for key in provenance.PAPER_PRETRAINING} == provenance.PAPER_PRETRAINING
    assert args.grad_scaling == "paper" and args.jpeg_draft is False
    for world_size in (1, 8, 64):
        assert provenance.pretraining_deviations(pretraining_record(world_size=world_size)) == []


def test_every_setting_that_changes_the_backbone_is_a_deviation():
    record = pretraining_record("--weight-decay", "1e-5", "--learning-rate-weights", "0.3",
                                "--learning-rate-biases", "0.01", "--warmup-epochs", "2", "--image-size", "160",
                                "--grad-scaling", "exact", "--jpeg-draft",
                                # How the run is computed changes nothing that is learned: no deviation.
                                "--loss-form", "gram", "--amp", "bf16", "--workers", "2", "--augment", "device")
    assert provenance.pretraining_deviations(record) == [
        "backbone pretrained with learning_rate_weights 0.3 (paper: 0.2)",
        "backbone pretrained with learning_rate_biases 0.01 (paper: 0.0048)",
        "backbone pretrained with weight_decay 1e-05 (paper: 1e-06)",
        "backbone pretrained with warmup_epochs 2 (paper: 10)",
        "backbone pretrained with image_size 160 (paper: 224)",
        "backbone pretrained with gradients divided by 1 (--grad-scaling exact on 1 process; paper: 32, the "
        "official code on 32 GPUs)",
        "backbone pretrained with JPEG draft-mode decoding (--jpeg-draft): views not pixel-identical to the "
        "official augmentation",
    ]
    assert provenance.pretraining_provenance(record) == {"code_version": "v1", "amp_dtype": "bfloat16",
                                                         "world_size": 1}


def test_official_scaling_is_the_papers_only_on_32_processes():
    assert parse_args(["--data", "d", "--out", "o", "--official-grad-scaling"]).grad_scaling == "official"
    assert provenance.pretraining_deviations(pretraining_record("--grad-scaling", "official", world_size=32)) == []
    assert provenance.pretraining_deviations(pretraining_record("--official-grad-scaling", world_size=8)) == [
        "backbone pretrained with gradients divided by 8 (--grad-scaling official on 8 processes; paper: 32, the "
        "official code on 32 GPUs)"]
    with pytest.raises(ValueError, match="gradient scaling 'half': expected one of"):
        provenance.gradient_divisor("half", 8)


def test_a_record_written_before_the_options_existed_says_what_its_run_did(tmp_path):
    """Before --grad-scaling and --jpeg-draft, gradients were exact (or official) and JPEGs drafted."""
    old = {k: v for k, v in pretraining_record(world_size=4).items() if k not in ("grad_scaling", "jpeg_draft")}
    fileio.write_json(tmp_path / "args.json", dict(old, official_grad_scaling=False))
    assert provenance.pretraining_deviations(provenance.read_pretraining_args(tmp_path / "resnet50.pth")) == [
        "backbone pretrained with gradients divided by 1 (--grad-scaling exact on 4 processes; paper: 32, the "
        "official code on 32 GPUs)",
        "backbone pretrained with JPEG draft-mode decoding (--jpeg-draft): views not pixel-identical to the "
        "official augmentation",
    ]


def published_prefix(weights):
    """The sha256 prefix torchvision publishes in the file name of its weights' URL (resnet50-<prefix>.pth)."""
    name = PurePosixPath(urlparse(weights.url).path).name
    return name, name.removesuffix(".pth").split("-")[-1]


def test_supervised_weights_other_than_torchvisions_v1_are_a_deviation():
    v1_file, v1_prefix = published_prefix(torchvision.models.ResNet50_Weights.IMAGENET1K_V1)
    assert provenance.TORCHVISION_V1_FILE == v1_file and provenance.TORCHVISION_V1_SHA256_PREFIX == v1_prefix
    assert provenance.supervised_weights_deviations("torchvision", v1_prefix + "f" * 56) == []

    _, v2_prefix = published_prefix(torchvision.models.ResNet50_Weights.IMAGENET1K_V2)
    v2 = v2_prefix + "0" * 56
    [deviation] = provenance.supervised_weights_deviations("torchvision", v2)
    assert deviation.startswith(f"supervised weights (torchvision's IMAGENET1K_V2 weights (resnet50-{v2_prefix}.pth), "
                                f"sha256 {v2}) are not torchvision's IMAGENET1K_V1 ResNet-50 ({v1_file}")
    [deviation] = provenance.supervised_weights_deviations("torchvision", "ab" * 32)
    assert deviation.startswith(f"supervised weights (sha256 {'ab' * 32}) are not torchvision's IMAGENET1K_V1")
    # Self-supervised layouts (no ImageNet classifier) are not supervised weights.
    assert provenance.supervised_weights_deviations("barlowtwins", "ab" * 32) == []
