"""Convert a ResNet-50 checkpoint into the backbone of Detectron2's R50-C4 models, strictly.

Published transfer numbers hinge on this step, and the usual converters fail quietly: MoCo's
yields an empty model for a Barlow Twins checkpoint (it keeps only ``module.encoder_q.``),
Detectron2's only logs the keys it skipped. Here every trunk tensor of the input must map to
a Detectron2 name, every tensor of the C4 backbone (stem, res2-res4, and the res5 the ROI head
holds) must be present with its ResNet-50 shape and finite, or the conversion fails listing
what is missing, unexpected or mis-shaped.

Inputs (``--format auto`` recognises them; a name overrides):
  barlowtwins   official Barlow Twins ``resnet50.pth``: torchvision keys, no ``fc``
  checkpoint    a Barlow Twins training ``checkpoint.pth`` (ours or the official one):
                ``{"model": {[module.]backbone.*, projector.*, bn.*}, ...}``
  torchvision   a torchvision ImageNet state dict (its ``fc`` classifier is dropped)
  moco          MoCo v1/v2: ``{"state_dict": {module.encoder_q.*, module.encoder_k.*, queue}}``
  vissl         VISSL: ``{"classy_state_dict": {"base_model": {"model": {"trunk": {_feature_blocks.*}}}}}``

Output: a pickle ``{"model": {name: float32 array}, "__author__": ..., "matching_heuristics": True}``
that ``DetectionCheckpointer`` loads, its name-matching placing ``res2-4`` under ``backbone.``
and ``res5`` under ``roi_heads.``. Needs only torch (arrays via ``Tensor.numpy``), never Detectron2.

    python -m bt_transfer.convert INPUT OUTPUT.pkl [--format auto|barlowtwins|...]
"""
import argparse
import pickle
import re
import sys
from pathlib import Path

import torch

from bt_transfer.fileio import atomic_write, sha256_file

FORMATS = ("barlowtwins", "checkpoint", "torchvision", "moco", "vissl")
RESNET50_BLOCKS = (3, 4, 6, 3)
KNOWN_DEPTHS = {(2, 2, 2, 2): "ResNet-18", (3, 4, 23, 3): "ResNet-101", (3, 8, 36, 3): "ResNet-152"}
_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")
# A step counter, not a weight: BatchNorm reads it only with momentum=None, which Detectron2
# never uses, and half the public checkpoints lack it. Dropped so every format gives the same arrays.
_COUNTER = "num_batches_tracked"
_LISTED = 12  # keys shown per category in an error; the count says how many more


class ConversionError(ValueError):
    """An input that cannot be converted faithfully; the message says which file and keys, and why."""


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


_BLOCK_KEY = re.compile(r"layer([1-4])\.(\d+)\.(conv[123]|bn[123]|downsample\.[01])\.(\w+)")


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


def _listing(label, items):
    shown = ", ".join(items[:_LISTED]) + (f" (and {len(items) - _LISTED} more)" if len(items) > _LISTED else "")
    return f"\n  {label} ({len(items)}): {shown}"


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


def torchvision_to_detectron2(state_dict):
    """The pure conversion: a torchvision-named ResNet-50 trunk -> {Detectron2 name: float32 array}.

    ``state_dict`` must hold exactly the trunk (no ``fc``); ``num_batches_tracked`` counters are
    ignored. Raises ConversionError listing missing / unexpected / mis-shaped keys, or non-finite ones.
    """
    expected = resnet50_shapes()
    trunk = {k: v for k, v in state_dict.items() if not str(k).endswith(_COUNTER)}
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
    non_finite = sorted(k for k, v in trunk.items() if not torch.isfinite(v).all())
    if non_finite:
        raise ConversionError("weights contain NaN or Inf" + _listing("non-finite", non_finite))
    return {detectron2_name(k): v.detach().to("cpu", torch.float32).numpy() for k, v in sorted(trunk.items())}


# --- Recognising the input formats ------------------------------------------------------------

def _has_prefix(state_dict, prefixes):
    return any(isinstance(k, str) and k.startswith(prefixes) for k in state_dict)


def _strip_ddp(state_dict):
    """Remove the ``module.`` that DistributedDataParallel puts before every key, if present."""
    if state_dict and all(isinstance(k, str) and k.startswith("module.") for k in state_dict):
        return {k.removeprefix("module."): v for k, v in state_dict.items()}
    return state_dict


def _entry(obj, path, fmt):
    """``obj[path[0]][path[1]]...``, or a ConversionError saying which entry the format needs."""
    for depth, key in enumerate(path):
        if not isinstance(obj, dict) or key not in obj:
            where = "".join(f"[{p!r}]" for p in path[:depth + 1])
            raise ConversionError(f"no {where} entry, which a {fmt!r} checkpoint has")
        obj = obj[key]
    if not isinstance(obj, dict):
        where = "".join(f"[{p!r}]" for p in path) or "the file"
        raise ConversionError(f"{where} holds a {type(obj).__name__}, expected a state dict")
    return obj


def _split(state_dict, fmt, trunk_prefix, dropped_prefixes):
    """(trunk with ``trunk_prefix`` removed, {dropped prefix: count}); a key in neither part is an error."""
    trunk, dropped, stray = {}, {}, []
    for key, value in state_dict.items():
        key = str(key)
        drop = next((p for p in dropped_prefixes if key.startswith(p)), None)
        if drop is not None:
            dropped[drop.rstrip(".")] = dropped.get(drop.rstrip("."), 0) + 1
        elif key.startswith(trunk_prefix):
            trunk[key.removeprefix(trunk_prefix)] = value
        else:
            stray.append(key)
    if stray:
        known = ", ".join(f"{p}*" for p in (trunk_prefix, *dropped_prefixes))
        raise ConversionError(f"keys outside what a {fmt!r} checkpoint holds ({known})" + _listing("unexpected", stray))
    return trunk, dropped


def extract_trunk(obj, fmt):
    """(torchvision-named trunk, {dropped part: tensor count}) from a loaded checkpoint of format ``fmt``.

    Only the known non-backbone parts of each format are dropped (classifier, projector, key
    encoder, queue); any other key outside the trunk is an error, never silently skipped.
    """
    if fmt in ("barlowtwins", "torchvision"):
        state_dict = _strip_ddp(_entry(obj, [], fmt))
        return _split(state_dict, fmt, "", ["fc."] if fmt == "torchvision" else [])
    if fmt == "checkpoint":
        state_dict = _strip_ddp(_entry(obj, ["model"], fmt))
        return _split(state_dict, fmt, "backbone.", ["projector.", "bn."])
    if fmt == "moco":
        state_dict = _strip_ddp(_entry(obj, ["state_dict"], fmt))
        return _split(state_dict, fmt, "encoder_q.", ["encoder_q.fc.", "encoder_k.", "queue"])
    if fmt == "vissl":
        trunk = _entry(obj, ["classy_state_dict", "base_model", "model", "trunk"], fmt)
        return _split(trunk, fmt, "_feature_blocks.", [])
    raise ConversionError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def detect_format(obj):
    """Name the format of a loaded checkpoint from its structure, or raise saying what was found."""
    if not isinstance(obj, dict):
        raise ConversionError(f"not a checkpoint: holds a {type(obj).__name__}, expected a dict of tensors "
                              "or a training checkpoint dict")
    if isinstance(obj.get("classy_state_dict"), dict):
        return "vissl"
    if isinstance(obj.get("state_dict"), dict) and _has_prefix(obj["state_dict"], ("module.encoder_q.", "encoder_q.")):
        return "moco"
    if isinstance(obj.get("model"), dict) and _has_prefix(obj["model"], ("module.backbone.", "backbone.")):
        return "checkpoint"
    state_dict = _strip_ddp(obj)
    if "conv1.weight" in state_dict and all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        return "torchvision" if "fc.weight" in state_dict else "barlowtwins"
    top = ", ".join(sorted(map(str, obj))[:_LISTED])
    raise ConversionError(f"not a recognised ResNet-50 checkpoint (top-level keys: {top}); "
                          f"recognised formats: {', '.join(FORMATS)} (see --help)")


def checkpoint_to_detectron2(obj, fmt="auto"):
    """(format, {Detectron2 name: array}, {dropped part: count}) for a loaded checkpoint."""
    fmt = detect_format(obj) if fmt == "auto" else fmt
    trunk, dropped = extract_trunk(obj, fmt)
    counters = sum(k.endswith(_COUNTER) for k in trunk)
    if counters:
        dropped[_COUNTER] = counters
    try:
        return fmt, torchvision_to_detectron2(trunk), dropped
    except ConversionError as e:
        raise ConversionError(f"as {fmt!r}: {e}") from None


# --- Files -------------------------------------------------------------------------------------

def load_checkpoint(path):
    """``torch.load(weights_only=True)`` with errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError) as e:
        # weights_only refuses any global it does not allow-list: a callable or class the
        # pickle would import and call. Any other failure means a damaged or foreign file.
        if culprit := re.search(r"GLOBAL ([\w.]+)", str(e)):
            raise ConversionError(
                f"{path}: refused: unpickling it would import and call {culprit.group(1)}, which could run "
                "arbitrary code (only tensors and plain containers are loaded). If the file comes from a "
                "trusted source, re-save just its state dict with torch.save and convert that.") from None
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        raise ConversionError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt, or not written by "
                              f"torch.save): {type(e).__name__} {reason}".rstrip()) from None


def convert_file(src, dst, fmt="auto"):
    """Convert checkpoint ``src`` into the Detectron2 pickle ``dst``; return the summary dict.

    Nothing is written unless the conversion succeeds (atomic write).
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".pkl":
        raise ConversionError(f"{dst}: the output must end in .pkl (DetectionCheckpointer reads name-matched "
                              "weights only from .pkl files)")
    if fmt != "auto" and fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    try:
        fmt, model, dropped = checkpoint_to_detectron2(load_checkpoint(src), fmt)
    except ConversionError as e:
        raise ConversionError(str(e) if str(e).startswith(str(src)) else f"{src}: {e}") from None
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


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m bt_transfer.convert", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[2:4]))
    parser.add_argument("input", type=Path, help="ResNet-50 checkpoint (.pth / .pth.tar / .torch)")
    parser.add_argument("output", type=Path, help="Detectron2 weights to write (.pkl)")
    parser.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="input format (default: auto)")
    args = parser.parse_args(argv)
    try:
        summary = convert_file(args.input, args.output, args.format)
    except ConversionError as e:
        sys.exit(f"error: {e}")
    dropped = ", ".join(f"{part} {n}" for part, n in sorted(summary["dropped"].items())) or "nothing"
    print(f"format      {summary['format']}\n"
          f"converted   {summary['tensors_converted']} tensors, {summary['parameters']:,} parameters "
          f"(dropped: {dropped})\n"
          f"input       {summary['input']}  sha256 {summary['sha256_input']}\n"
          f"output      {summary['output']}  sha256 {summary['sha256_output']}")


if __name__ == "__main__":
    main()
