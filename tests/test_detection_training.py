"""One detection training step on CPU with the real Detectron2: gradient accumulation equals one batch of 16, the
trainer takes k micro-batches per step, 16 images train in one process, and each protocol config trains at its
real image sizes and ROI counts. These are the suite's slowest tests (the R50-C4 head runs res5 on every ROI),
each sized as small as what it proves allows.
"""
import numpy as np
import pytest
import torch

from bt_transfer.datasets.layout import use_datasets_root
from bt_transfer.datasets.synthetic import write_coco, write_voc
from bt_transfer.detection.accumulation import AccumulatingTrainer, accumulate_gradients
from bt_transfer.detection.protocol import resolve_task
from bt_transfer.detection.trainer import Trainer


def equal_sized_images(count, size=32, boxes=1, seed=0):
    """Detectron2 training inputs, all ``size`` px square with ``boxes`` ground-truth boxes: nothing about them
    (padding, ROIs per image) depends on which images share a forward pass."""
    from detectron2.structures import Boxes, Instances

    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for _ in range(count):
        instances = Instances((size, size))
        corner = torch.rand(boxes, 2, generator=generator) * size / 2
        instances.gt_boxes = Boxes(torch.cat([corner, corner + size / 4 + torch.rand(boxes, 2, generator=generator)
                                              * size / 4], dim=1))
        instances.gt_classes = torch.randint(0, 20, (boxes,), generator=generator)
        inputs.append({"image": torch.rand(3, size, size, generator=generator) * 255, "instances": instances})
    return inputs


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_accumulated_micro_batches_give_the_gradient_of_one_batch_of_16():
    """8 micro-batches of 2 against one batch of 16, FrozenBN so that accumulation is the only difference.

    Every sample is kept (RPN: all labelled anchors; ROI head: the one proposal and one ground-truth box of each
    image), so the random subsampling cannot differ between the two; both then normalise every loss per image.
    Small images and 7 x 7 ROI features (res5 on every ROI is the cost) keep it to a few seconds.
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    opts = ["MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "256",  # 2 x 2 x 15 anchors
            "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION", "7",
            "MODEL.RPN.POST_NMS_TOPK_TRAIN", "1", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "2",
            "MODEL.ROI_HEADS.POSITIVE_FRACTION", "1.0"]
    resolved = resolve_task("voc", 1, opts=opts, images_per_gpu=2, cpu=True)
    assert resolved.cfg.SOLVER.ACCUMULATION_STEPS == 8
    torch.manual_seed(0)
    model = build_model(resolved.cfg).train()
    inputs = equal_sized_images(16)
    with EventStorage(0):
        whole = model(inputs)
        sum(whole.values()).backward()
        one_batch = gradients(model)
        model.zero_grad(set_to_none=True)
        accumulated_losses = accumulate_gradients(model, [inputs[i:i + 2] for i in range(0, 16, 2)])
        accumulated = gradients(model)
    assert whole["loss_box_reg"] > 0 and whole["loss_cls"] > 0  # foreground and background ROIs both trained
    assert accumulated.keys() == one_batch.keys() and len(one_batch) > 60
    for name, grad in one_batch.items():  # equal up to float32 summation order (measured: 2e-6 at most)
        assert (accumulated[name] - grad).norm() <= 1e-4 * grad.norm(), name
    for name, loss in whole.items():
        torch.testing.assert_close(accumulated_losses[name], loss.detach(), rtol=1e-5, atol=1e-8)
    # The comparison can tell batches apart: the first micro-batch alone is far from the batch of 16.
    model.zero_grad(set_to_none=True)
    with EventStorage(0):
        sum(model(inputs[:2]).values()).backward()
    first = gradients(model)["backbone.res4.0.conv1.weight"]
    reference = one_batch["backbone.res4.0.conv1.weight"]
    assert (first - reference).norm() > 0.1 * reference.norm()


def one_step(trainer):
    """Run one training step of a built ``Trainer`` outside its loop (no hooks: no evaluation, no PreciseBN)."""
    from detectron2.utils.events import EventStorage

    with EventStorage(0) as storage:
        trainer.iter = trainer.start_iter = 0
        trainer.run_step()
    return storage


def record_forwards(module):
    """The first argument's length (a batch of inputs) or batch dimension (a tensor) of each forward of ``module``."""
    seen = []

    def hook(_, args):
        seen.append(args[0].shape[0] if isinstance(args[0], torch.Tensor) else len(args[0]))
    module.register_forward_pre_hook(hook)
    return seen


@pytest.fixture
def smoke_trainer(generated_data, tmp_path):
    """A ``Trainer`` of the VOC protocol at the smoke sizes, on the generated data, with few ROIs."""
    def build(opts=(), **choices):
        use_datasets_root(generated_data)
        resolved = resolve_task("voc", 1, smoke=True, cpu=True, **choices, opts=[
            *opts, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "4", "OUTPUT_DIR", str(tmp_path)])
        torch.manual_seed(0)
        return resolved, Trainer(resolved.cfg)
    return build


def test_trainer_steps_once_over_k_micro_batches(smoke_trainer):
    from detectron2.engine import hooks

    resolved, trainer = smoke_trainer(schedule="protocol", images_per_gpu=1, opts=["SOLVER.IMS_PER_BATCH", "2"])
    assert isinstance(trainer._trainer, AccumulatingTrainer) and trainer._trainer.steps == 2
    forwards = record_forwards(trainer.model)
    steps = []
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    storage = one_step(trainer)
    assert forwards == [1, 1] and steps == [1]  # two micro-batches of one image, one optimizer step
    assert np.isfinite(storage.history("total_loss").latest())
    precise_bn = next(hook for hook in trainer._hooks if isinstance(hook, hooks.PreciseBN))
    assert precise_bn._num_iter == 2 * resolved.cfg.TEST.PRECISE_BN.NUM_ITER  # as many images as without
    assert len(next(iter(precise_bn._data_loader))) == 1  # of micro-batches too


def test_one_iteration_of_16_images_in_one_process(smoke_trainer):
    """The protocol's batch on one process: 16 images in one forward pass, BN over all 16, the paper's LR."""
    resolved, trainer = smoke_trainer(schedule="protocol")
    solver = resolved.cfg.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.ACCUMULATION_STEPS) == (16, 0.1, 1)
    about_batch = ("linear scaling", "plain BN", "gradient", "SOLVER.IMS_PER_BATCH", "SOLVER.BASE_LR")
    assert not any(d.startswith(about_batch) for d in resolved.deviations)  # only the smoke sizes
    model = trainer.model
    assert isinstance(model.backbone.stem.conv1.norm, torch.nn.BatchNorm2d)
    forwards, normalised = record_forwards(model), record_forwards(model.backbone.stem.conv1.norm)
    storage = one_step(trainer)
    assert forwards == [16] and normalised == [16]
    assert np.isfinite(storage.history("total_loss").latest())


@pytest.fixture(scope="module")
def real_size_root(tmp_path_factory):
    """Generated VOC and COCO training images at the protocol's size (about 800 px), two per split."""
    root = tmp_path_factory.mktemp("real-size") / "datasets"
    for year, seed in ((2007, 1), (2012, 2)):
        write_voc(root / f"VOC{year}", year, {"trainval": 2}, np.random.default_rng([0, seed]), 800)
    write_coco(root / "coco", np.random.default_rng([0, 3]), 800, {"train2017": 2})  # the first: 1600 px
    return root


@pytest.mark.parametrize("task", ["voc", "coco"])
def test_one_iteration_at_the_protocols_image_sizes_and_roi_counts(real_size_root, tmp_path, task):
    """The configs as they are (short side 480-800, max 1333; 512 ROIs per image; RPN top-k 12000 / 2000), one
    image per step to keep it affordable."""
    use_datasets_root(real_size_root)
    cfg = resolve_task(task, 1, cpu=True, opts=["SOLVER.IMS_PER_BATCH", "1", "DATALOADER.NUM_WORKERS", "0",
                                                "OUTPUT_DIR", str(tmp_path)]).cfg
    assert (cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN) == (512, 2000)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    images, proposals = [], []
    trainer.model.backbone.register_forward_pre_hook(lambda _, args: images.append(tuple(args[0].shape[-2:])))
    trainer.model.roi_heads.register_forward_pre_hook(lambda _, args: proposals.append(len(args[2][0])))
    storage = one_step(trainer)
    (height, width), = images
    assert min(cfg.INPUT.MIN_SIZE_TRAIN) <= min(height, width) <= max(cfg.INPUT.MIN_SIZE_TRAIN)
    assert max(height, width) <= cfg.INPUT.MAX_SIZE_TRAIN
    assert proposals == [2000]
    latest = {name: storage.history(name).latest() for name in storage.histories()}
    assert latest["roi_head/num_fg_samples"] + latest["roi_head/num_bg_samples"] == 512
    assert latest["rpn/num_pos_anchors"] + latest["rpn/num_neg_anchors"] == 256
    assert np.isfinite(latest["total_loss"]) and ("loss_mask" in latest) == (task == "coco")
