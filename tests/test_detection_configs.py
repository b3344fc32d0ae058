"""The detection configs hold the paper's protocol, the extra-norm C4 head, and the scaling rule.

Protocol: Barlow Twins paper (Zbontar et al. 2021), Appendix C.2, which follows MoCo's R50-C4 set-up.
"""
import pytest
import torch

from bt_transfer.detection.scaling import Schedule, describe, linear_scaling
from bt_transfer.detection.protocol import resolve_config
from bt_transfer.detection.protocol import CONFIGS

C2 = "Barlow Twins paper, Appendix C.2"

SHARED = {  # Base-RCNN-C4-BN.yaml, for both tasks
    "MODEL.META_ARCHITECTURE": "GeneralizedRCNN",
    "MODEL.BACKBONE.NAME": "build_resnet_backbone",
    "MODEL.RESNETS.DEPTH": 50,
    "MODEL.RESNETS.OUT_FEATURES": ["res4"],  # C4: the backbone ends at res4, res5 is the ROI head
    "MODEL.BACKBONE.FREEZE_AT": 0,
    "MODEL.RESNETS.NORM": "SyncBN",
    "MODEL.RESNETS.STRIDE_IN_1X1": False,
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.280, 103.530],
    "MODEL.PIXEL_STD": [58.395, 57.120, 57.375],
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 6000,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 1000,
    "MODEL.ROI_HEADS.NAME": "Res5ROIHeadsExtraNorm",
    "TEST.PRECISE_BN.ENABLED": True,
    "SOLVER.IMS_PER_BATCH": 16,
}
VOC = {
    "MODEL.MASK_ON": False,
    "MODEL.ROI_HEADS.NUM_CLASSES": 20,
    "DATASETS.TRAIN": ("voc_2007_trainval", "voc_2012_trainval"),
    "DATASETS.TEST": ("voc_2007_test",),
    "INPUT.MIN_SIZE_TRAIN": tuple(range(480, 801, 32)),
    "INPUT.MIN_SIZE_TEST": 800,
    "SOLVER.BASE_LR": 0.1,
    "SOLVER.MAX_ITER": 24000,
    "SOLVER.STEPS": (18000, 22000),
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.WARMUP_FACTOR": 0.333,
}
COCO = {
    "MODEL.MASK_ON": True,
    "MODEL.ROI_HEADS.NUM_CLASSES": 80,
    "DATASETS.TRAIN": ("coco_2017_train",),
    "DATASETS.TEST": ("coco_2017_val",),
    "INPUT.MIN_SIZE_TRAIN": tuple(range(640, 801, 32)),
    "INPUT.MIN_SIZE_TEST": 800,
    "SOLVER.BASE_LR": 0.03,
    # Detectron2's 1x schedule, its default warmup included.
    "SOLVER.MAX_ITER": 90000,
    "SOLVER.STEPS": (60000, 80000),
    "SOLVER.WARMUP_ITERS": 1000,
    "SOLVER.WARMUP_FACTOR": 0.001,
}
CASES = [(task, key, value) for task, own in (("voc", VOC), ("coco", COCO)) for key, value in {**SHARED, **own}.items()]


def lookup(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


@pytest.fixture(scope="module")
def protocol_configs():
    """The configs as 8 GPUs resolve them: the protocol's own set-up, nothing rescaled."""
    return {task: resolve_config(path, world_size=8) for task, path in CONFIGS.items()}


@pytest.mark.parametrize("task,key,expected", CASES, ids=[f"{t}-{k}" for t, k, _ in CASES])
def test_protocol_value(protocol_configs, task, key, expected):
    assert lookup(protocol_configs[task].cfg, key) == expected, f"{task}: {key} must be {expected!r} ({C2})"


@pytest.mark.parametrize("task", list(CONFIGS))
def test_protocol_on_8_gpus_has_no_deviation(protocol_configs, task):
    assert protocol_configs[task].deviations == ()


def test_one_process_uses_plain_bn_and_records_every_change():
    opts = ["SOLVER.MAX_ITER", "4", "OUTPUT_DIR", "/tmp/x", "SEED", "3"]
    resolved = resolve_config(CONFIGS["voc"], opts, world_size=1, schedule="linear-scaling")
    cfg, deviations = resolved.cfg, resolved.deviations
    assert cfg.MODEL.RESNETS.NORM == "BN"  # backbone and the res5 head, its extra norm included
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (2, 0.1 / 8)
    assert cfg.SOLVER.MAX_ITER == 4  # overrides are final values, applied after the scaling rule
    # The rule's sentence names only what the run kept: MAX_ITER 4 is stated once, as the override.
    assert deviations[0] == ("linear scaling rule for 1 GPU(s) x 2 images: batch 2 (protocol 16), BASE_LR 0.0125 "
                             "(0.1), STEPS (144000, 176000) ((18000, 22000)), WARMUP_ITERS 8000 (1000)")
    assert "plain BN on one process (MODEL.RESNETS.NORM)" in deviations[1]
    assert deviations[2:] == ("SOLVER.MAX_ITER: 4 (protocol: 24000)",)  # OUTPUT_DIR and SEED are bookkeeping


def test_no_rescale_keeps_the_protocol_schedule():
    resolved = resolve_config(CONFIGS["coco"], world_size=2, schedule="protocol")
    solver = resolved.cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.MAX_ITER) == (16, 0.03, 90000)
    assert resolved.cfg.MODEL.RESNETS.NORM == "SyncBN" and resolved.deviations == ()


VOC_SCHEDULE = Schedule(ims_per_batch=16, base_lr=0.1, max_iter=24000, steps=(18000, 22000), warmup_iters=1000)


@pytest.mark.parametrize("gpus,expected", [
    (1, Schedule(2, 0.0125, 192000, (144000, 176000), 8000)),
    (2, Schedule(4, 0.025, 96000, (72000, 88000), 4000)),
    (4, Schedule(8, 0.05, 48000, (36000, 44000), 2000)),
    (8, VOC_SCHEDULE),
])
def test_linear_scaling_rule(gpus, expected):
    scaled = linear_scaling(VOC_SCHEDULE, gpus)
    assert scaled.ims_per_batch == expected.ims_per_batch
    assert scaled.base_lr == pytest.approx(expected.base_lr, rel=1e-12)
    assert scaled.max_iter == expected.max_iter
    assert (scaled.steps, scaled.warmup_iters) == (expected.steps, expected.warmup_iters)
    # The invariants the rule exists for: images seen and LR per image stay the protocol's.
    assert scaled.max_iter * scaled.ims_per_batch == VOC_SCHEDULE.max_iter * VOC_SCHEDULE.ims_per_batch
    assert scaled.base_lr / scaled.ims_per_batch == pytest.approx(VOC_SCHEDULE.base_lr / VOC_SCHEDULE.ims_per_batch)
    assert (describe(VOC_SCHEDULE, scaled, gpus) == "") == (gpus == 8)


def test_linear_scaling_refuses_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="does not split over 12 GPUs"):
        linear_scaling(VOC_SCHEDULE, 12)
    assert linear_scaling(VOC_SCHEDULE, 16) == VOC_SCHEDULE  # one image per GPU, still 16 in all


@pytest.fixture(scope="module")
def voc_model():
    from detectron2.modeling import build_model

    cfg = resolve_config(CONFIGS["voc"], ["MODEL.DEVICE", "cpu"], world_size=1).cfg
    return build_model(cfg).eval()


def test_extra_norm_head_is_registered():
    from detectron2.modeling import ROI_HEADS_REGISTRY

    from bt_transfer.detection.roi_heads import Res5ROIHeadsExtraNorm

    assert ROI_HEADS_REGISTRY.get("Res5ROIHeadsExtraNorm") is Res5ROIHeadsExtraNorm


def test_extra_norm_type_follows_the_config():
    from detectron2.modeling import build_model

    cfg = resolve_config(CONFIGS["voc"], ["MODEL.DEVICE", "cpu"], world_size=8).cfg  # SyncBN kept
    assert isinstance(build_model(cfg).roi_heads.res5.norm, torch.nn.SyncBatchNorm)


def test_res5_output_passes_through_the_extra_norm(voc_model):
    """The head's box feature equals BN (computed here by hand) of res5's last block."""
    from detectron2.structures import Boxes

    heads = voc_model.roi_heads
    norm = heads.res5.norm
    generator = torch.Generator().manual_seed(0)
    channels = norm.num_features
    with torch.no_grad():
        norm.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
        norm.bias.copy_(torch.randn(channels, generator=generator))
        norm.running_mean.copy_(torch.randn(channels, generator=generator))
        norm.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
        res4 = torch.randn(1, 1024, 8, 8, generator=generator)
        boxes = [Boxes(torch.tensor([[0.0, 0.0, 128.0, 128.0], [16.0, 8.0, 96.0, 120.0]]))]

        feature = heads._shared_roi_transform([res4], boxes)

        blocks = torch.nn.Sequential(*[m for name, m in heads.res5.named_children() if name != "norm"])
        before = blocks(heads.pooler([res4], boxes))
        by_hand = (before - norm.running_mean[:, None, None]) / torch.sqrt(norm.running_var[:, None, None] + norm.eps)
        by_hand = by_hand * norm.weight[:, None, None] + norm.bias[:, None, None]
    assert list(heads.res5.named_children())[-1][0] == "norm"
    assert feature.shape == (2, 2048, 7, 7)
    torch.testing.assert_close(feature, by_hand, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(feature, before, atol=1e-2)  # the norm is not a no-op here


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_more_than_one_process_without_cuda_is_refused():
    from bt_transfer.core.errors import UserError
    from bt_transfer.detection.trainer import argument_parser, cli, world_size_of

    assert world_size_of(argument_parser().parse_args(["--num-gpus", "1"])) == 1  # `make` passes GPUS=1 on CPU
    with pytest.raises(UserError, match="CUDA is not available"):
        world_size_of(argument_parser().parse_args(["--num-gpus", "2"]))
    with pytest.raises(SystemExit, match="^error: --num-gpus 2 --num-machines 1 asked for, but CUDA is not available"):
        cli(["--num-gpus", "2"])


def test_detectron2_auto_scaling_and_ours_do_not_stack():
    with pytest.raises(ValueError, match="--no-rescale"):
        resolve_config(CONFIGS["voc"], ["SOLVER.REFERENCE_WORLD_SIZE", "8"], world_size=1, schedule="linear-scaling")
    with pytest.raises(ValueError, match="--no-rescale"):
        resolve_config(CONFIGS["voc"], ["SOLVER.REFERENCE_WORLD_SIZE", "8"], world_size=1, images_per_gpu=2)
