"""The checkpoint layouts of ResNet-50 releases, and the one reader every stage uses to take a ResNet-50 from them.

``read_resnet50(path, fmt="auto")`` loads a file without running code from it, recognises its layout,
keeps the trunk (dropping only the known non-backbone parts of that layout: classifier, projector, key
encoder, queue...) and checks it strictly against ResNet-50 (``bt_transfer.convert.resnet50``). The
converter and the ImageNet evaluation both take their backbone from it.

Layouts (``--format``; ``auto`` recognises them):
  barlowtwins   official Barlow Twins ``resnet50.pth``: torchvision keys, no ``fc``
  checkpoint    a Barlow Twins training ``checkpoint.pth`` (ours or the official one):
                ``{"model": {[module.]backbone.*, projector.*, bn.*}, ...}``
  torchvision   a torchvision ImageNet state dict (its ``fc`` classifier is dropped)
  moco          MoCo v1/v2: ``{"state_dict": {module.encoder_q.*, module.encoder_k.*, queue}}``
  vissl         VISSL: ``{"classy_state_dict": {"base_model": {"model": {"trunk": {_feature_blocks.*}}}}}``
"""
import torch

from bt_transfer.convert.resnet50 import BN_COUNTER, ConversionError, _listing, check_trunk
from bt_transfer.core.safe_load import FileLoadError, load_torch_file

FORMATS = ("barlowtwins", "checkpoint", "torchvision", "moco", "vissl")
_LISTED = 12  # top-level keys shown when nothing is recognised


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


def trunk_of(obj, fmt="auto"):
    """(format, torchvision-named trunk of float32 tensors, {dropped part: tensor count}) of a loaded checkpoint."""
    fmt = detect_format(obj) if fmt == "auto" else fmt
    trunk, dropped = extract_trunk(obj, fmt)
    counters = sum(k.endswith(BN_COUNTER) for k in trunk)
    if counters:
        dropped[BN_COUNTER] = counters
    try:
        return fmt, check_trunk(trunk), dropped
    except ConversionError as e:
        raise ConversionError(f"as {fmt!r}: {e}") from None


def read_resnet50(path, fmt="auto"):
    """``trunk_of`` the checkpoint file ``path``, loaded without running code from it.

    Raises ConversionError (naming the file) for an unreadable or unsafe file, an unknown layout, or a
    trunk that is not exactly ResNet-50's with finite values.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    try:
        obj = load_torch_file(path)
    except FileLoadError as e:
        raise ConversionError(str(e)) from None
    try:
        return trunk_of(obj, fmt)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
