"""A ResNet-50 checkpoint as the backbone of Detectron2's R50-C4 models: the names and the file.

Output: a pickle ``{"model": {name: float32 array}, "__author__": ..., "matching_heuristics": True}`` that
``DetectionCheckpointer`` loads, its name-matching placing ``res2-4`` under ``backbone.`` and ``res5`` under
``roi_heads.``. Needs only torch (arrays via ``Tensor.numpy``), never Detectron2.
"""
import pickle
from pathlib import Path

from bt_transfer.convert.formats import read_resnet50
from bt_transfer.convert.resnet50 import ConversionError, detectron2_name
from bt_transfer.core.fileio import atomic_write, sha256_file


def to_detectron2(trunk):
    """{Detectron2 name: float32 array} of a checked torchvision-named trunk (``formats.read_resnet50``)."""
    return {detectron2_name(k): v.numpy() for k, v in trunk.items()}


def convert_file(src, dst, fmt="auto"):
    """Convert checkpoint ``src`` into the Detectron2 pickle ``dst``; return the summary dict.

    Nothing is written unless the conversion succeeds (atomic write).
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".pkl":
        raise ConversionError(f"{dst}: the output must end in .pkl (DetectionCheckpointer reads name-matched "
                              "weights only from .pkl files)")
    fmt, trunk, dropped = read_resnet50(src, fmt)
    model = to_detectron2(trunk)
    with atomic_write(dst, "wb") as f:
        pickle.dump({"model": model, "__author__": f"bt-transfer convert ({fmt}: {src.name})",
                     "matching_heuristics": True}, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {
        "input": str(src), "output": str(dst), "format": fmt,
        "tensors_converted": len(model),
        "parameters": sum(a.size for k, a in model.items() if not k.endswith(("running_mean", "running_var"))),
        "dropped": dropped,
        "sha256_input": sha256_file(src), "sha256_output": sha256_file(dst),
    }
