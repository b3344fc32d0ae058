"""What a ResNet-50 trunk is: its tensors and shapes, derived from the architecture, the strict check of a
state dict against them, and the Detectron2 names of its tensors.
"""
import re

import torch

from bt_transfer.core.errors import UserError
from bt_transfer.core.text import listing

RESNET50_BLOCKS = (3, 4, 6, 3)
KNOWN_DEPTHS = {(2, 2, 2, 2): "ResNet-18", (3, 4, 23, 3): "ResNet-101", (3, 8, 36, 3): "ResNet-152"}
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
# A step counter, not a weight: BatchNorm reads it only with momentum=None, which neither torchvision's
# training nor Detectron2 uses, and half the public checkpoints lack it. Dropped so every format gives the
# same arrays.
BN_COUNTER = "num_batches_tracked"


class ConversionError(UserError, ValueError):
    """An input that cannot be converted faithfully; the message says which file and keys, and why."""


def _listing(label, items):
    return f"\n  {label} ({len(items)}): {listing(items)}"


def resnet50_shapes():
    """torchvision name -> shape of every ResNet-50 trunk tensor, derived from the architecture.

    Computed from the block counts and widths rather than from torchvision, so that the
    equivalence test against torchvision's forward pass checks an independent description.
    """
    def conv_bn(prefix, conv, bn, out_ch, in_ch, k):
        return {f"{prefix}{conv}.weight": (out_ch, in_ch, k, k),
                **{f"{prefix}{bn}.{t}": (out_ch,) for t in _BN_TENSORS}}

    shapes = conv_bn("", "conv1", "bn1", 64, 3, 7)
    in_ch = 64
    for stage, blocks in enumerate(RESNET50_BLOCKS, start=1):
        width = 64 * 2 ** (stage - 1)
        for block in range(blocks):
            prefix = f"layer{stage}.{block}."
            shapes |= conv_bn(prefix, "conv1", "bn1", width, in_ch, 1)
            shapes |= conv_bn(prefix, "conv2", "bn2", width, width, 3)
            shapes |= conv_bn(prefix, "conv3", "bn3", 4 * width, width, 1)
            if block == 0:
                shapes |= conv_bn(prefix, "downsample.0", "downsample.1", 4 * width, in_ch, 1)
            in_ch = 4 * width
    return shapes


_STEM_KEY = re.compile(r"(conv1|bn1)\.\w+")
_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(\w+)")


def is_trunk_name(name):
    """Whether ``name`` names a tensor of a torchvision ResNet trunk (any depth): stem or block, never ``fc``."""
    return bool(_STEM_KEY.fullmatch(name) or _BLOCK_KEY.fullmatch(name))


def detectron2_name(name):
    """Detectron2 name of a torchvision ResNet trunk tensor: ``layerK`` -> ``res{K+1}``,
    ``bnJ`` -> ``convJ.norm``, ``downsample.0/1`` -> ``shortcut`` / ``shortcut.norm``."""
    if name.startswith("conv1."):
        return "stem." + name
    if name.startswith("bn1."):
        return "stem.conv1.norm." + name.removeprefix("bn1.")
    stage, block, layer, leaf = _BLOCK_KEY.fullmatch(name).groups()
    layer = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}.get(layer) or \
        re.sub(r"bn(\d)", r"conv\1.norm", layer)
    return f"res{int(stage) + 1}.{block}.{layer}.{leaf}"


def _architecture(keys):
    """What the keys look like, for the error message: blocks per stage and block type."""
    blocks = [0, 0, 0, 0]
    for key in keys:
        if match := _BLOCK_KEY.fullmatch(key):
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage - 1] = max(blocks[stage - 1], block + 1)
    blocks = tuple(blocks)
    kind = "bottleneck" if any(".conv3." in k for k in keys) else "basic"
    if (blocks, kind) == (RESNET50_BLOCKS, "bottleneck"):
        return "its blocks per stage are ResNet-50's"
    name = "ResNet-34" if blocks == RESNET50_BLOCKS else KNOWN_DEPTHS.get(blocks)
    like = f", like {name}" if name else ""
    return f"it has {blocks} {kind} blocks per stage{like}; ResNet-50 has {RESNET50_BLOCKS} bottleneck blocks"


def _all_finite(tensor):
    # A NaN or Inf anywhere makes the sum NaN or Inf, so a finite sum proves every element finite (and costs far
    # less than an element-wise test); only a sum that overflows needs the element-wise test.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def check_trunk(state_dict):
    """The trunk of a torchvision-named ResNet-50 state dict as float32 CPU tensors, checked strictly.

    ``state_dict`` must hold exactly the trunk (no ``fc``); ``num_batches_tracked`` counters are
    dropped. Raises ConversionError listing missing / unexpected / mis-shaped keys, or non-finite ones.
    """
    expected = resnet50_shapes()
    trunk = {k: v for k, v in state_dict.items() if not str(k).endswith(BN_COUNTER)}
    missing = sorted(expected.keys() - trunk.keys())
    unexpected = sorted(map(str, trunk.keys() - expected.keys()))
    shapes = {k: tuple(getattr(trunk[k], "shape", ())) for k in expected.keys() & trunk.keys()}
    misshaped = sorted(f"{k} {shape} (expected {expected[k]})" for k, shape in shapes.items() if shape != expected[k])
    if missing or unexpected or misshaped:
        raise ConversionError(
            f"does not match the ResNet-50 trunk ({_architecture(trunk)})"
            + (_listing("missing", missing) if missing else "")
            + (_listing("unexpected", unexpected) if unexpected else "")
            + (_listing("mis-shaped", misshaped) if misshaped else ""))
    not_float = sorted(k for k, v in trunk.items() if not (isinstance(v, torch.Tensor) and v.is_floating_point()))
    if not_float:
        raise ConversionError("weights must be floating-point tensors" + _listing("not", not_float))
    non_finite = sorted(k for k, v in trunk.items() if not _all_finite(v))
    if non_finite:
        raise ConversionError("weights contain NaN or Inf" + _listing("non-finite", non_finite))
    return {k: v.detach().to("cpu", torch.float32) for k, v in sorted(trunk.items())}
