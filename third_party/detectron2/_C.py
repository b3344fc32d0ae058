"""Stand-in for Detectron2's compiled extension in the suite's pure-Python build.

The R50-C4 Faster/Mask R-CNN path never calls ``detectron2._C`` (ROIAlign and NMS for
horizontal boxes come from torchvision), but several modules import it at import time.
This module answers the environment queries honestly and turns every use of a
compiled-only operator into an error that names it.
"""
import torch

_WHY = (
    "it is compiled-only (rotated boxes, deformable convolution or the fast COCO evaluator), and this "
    "Detectron2 is the pure-Python build made by bt-transfer's `make setup`. Build Detectron2 from its "
    "GitHub sources to use it, or avoid it (e.g. COCOEvaluator(..., use_fast_impl=False))."
)


class CompiledOperatorUnavailable(AttributeError, NotImplementedError):
    pass


def get_compiler_version():
    return "none (pure-Python build of Detectron2, no compiled _C)"


def get_cuda_version():
    return "none (pure-Python build of Detectron2, no compiled _C)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise CompiledOperatorUnavailable(f"detectron2._C.{name} is not available: {_WHY}")


def _unavailable(op_name):
    def fail(*args, **kwargs):
        raise CompiledOperatorUnavailable(f"torch.ops.detectron2.{op_name} is not available: {_WHY}")

    return fail


# layers/nms.py reaches the rotated NMS through the operator registry, not through this module.
_lib = torch.library.Library("detectron2", "DEF")
_lib.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
_lib.impl("nms_rotated", _unavailable("nms_rotated"), "CompositeExplicitAutograd")
