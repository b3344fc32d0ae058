"""The one reader every stage takes a ResNet-50 from: any checkpoint layout of ``layouts.LAYOUTS``.

``read_resnet50(path, fmt="auto")`` loads a file without running code from it, reads it as layout ``fmt``
(``auto``: the only layout that accounts for every key of the file), keeps the trunk, drops only that layout's
known non-backbone parts, and checks the trunk strictly against ResNet-50 (``bt_transfer.convert.resnet50``).
A key no part of the layout accounts for is an error that lists it, never skipped. The converter and the
ImageNet evaluation both take their backbone from here.
"""
from dataclasses import dataclass, field

import torch

from bt_transfer.convert.layouts import LAYOUTS
from bt_transfer.convert.resnet50 import BN_COUNTER, ConversionError, _listing, check_trunk, is_trunk_name
from bt_transfer.core.safe_load import FileLoadError, load_torch_file
from bt_transfer.core.text import listing

FORMATS = tuple(LAYOUTS)
_STEM = "conv1.weight"  # every ResNet trunk has it: a layout whose trunk lacks it does not hold a ResNet


@dataclass
class _Split:
    """A state dict cut along one layout's lines."""

    trunk: dict = field(default_factory=dict)  # torchvision name -> tensor
    dropped: dict = field(default_factory=dict)  # part -> number of tensors
    outside: list = field(default_factory=list)  # keys in no part, outside the trunk prefix
    odd: list = field(default_factory=list)  # keys under the trunk prefix that name no ResNet tensor
    clashes: list = field(default_factory=list)  # keys renamed onto a trunk name another key already has
    copies: list = field(default_factory=list)  # (key of a copy, key of its twin under the trunk prefix)
    state_dict: dict = field(default_factory=dict)  # keys without DistributedDataParallel's "module."
    wrapped: bool = False  # whether the file put "module." before every key

    def as_in_file(self, keys):
        return sorted(("module." if self.wrapped else "") + key for key in keys)

    @property
    def unexplained(self):
        orphans = [c for c, twin in self.copies if twin not in self.state_dict]
        return self.as_in_file(self.outside + self.odd + self.clashes + orphans)

    @property
    def fits(self):
        return not self.unexplained and _STEM in self.trunk


def _where(path):
    return "".join(f"[{p!r}]" for p in path) or "the file"


def _state_dict_at(obj, path):
    """``obj[path[0]][path[1]]...`` if it is a dict, else None."""
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj if isinstance(obj, dict) else None


def _wrapped(state_dict):
    """Whether every key starts with the ``module.`` of DistributedDataParallel."""
    return bool(state_dict) and all(isinstance(k, str) and k.startswith("module.") for k in state_dict)


def _part_of(key, parts):
    return next((p for p in parts if key == p or key.startswith(p + ".")), None)


def _split(layout, state_dict):
    """Cut ``state_dict`` (the one at ``layout.path``) into trunk, dropped parts and what neither accounts for.

    Keys are matched without DistributedDataParallel's ``module.`` (where the layout allows it) and listed as
    the file spells them."""
    wrapped = layout.ddp and _wrapped(state_dict)
    split = _Split(state_dict={str(k).removeprefix("module.") if wrapped else str(k): v
                               for k, v in state_dict.items()}, wrapped=wrapped)
    for key, value in split.state_dict.items():
        part = _part_of(key, layout.drop)
        copy = next((c for c in layout.copies if key.startswith(c)), None)
        if part is not None:
            split.dropped[part] = split.dropped.get(part, 0) + 1
        elif copy is not None:
            split.copies.append((key, layout.trunk + key.removeprefix(copy)))
            split.dropped[copy.rstrip(".")] = split.dropped.get(copy.rstrip("."), 0) + 1
        elif key.startswith(layout.trunk):
            first, dot, rest = key.removeprefix(layout.trunk).partition(".")
            name = layout.rename.get(first, first) + dot + rest
            if name in split.trunk:
                split.clashes.append(key)
                continue
            if not is_trunk_name(name):
                split.odd.append(key)
            split.trunk[name] = value
        else:
            split.outside.append(key)
    return split


def _known(layout):
    """What a layout accounts for, for messages: ``trunk under 'encoder_q.', encoder_k, queue``."""
    trunk = f"trunk under {layout.trunk!r}" if layout.trunk else "trunk at the top"
    return ", ".join([trunk, *layout.drop, *(f"its copy under {c!r}" for c in layout.copies)])


def _same(a, b):
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)


def _read(obj, fmt):
    """(trunk, dropped) of ``obj`` read as ``fmt``; an error for any key the layout does not account for."""
    layout = LAYOUTS[fmt]
    for depth, key in enumerate(layout.path):
        if not isinstance(obj, dict) or key not in obj:
            raise ConversionError(f"no {_where(layout.path[:depth + 1])} entry, which a {fmt!r} checkpoint has")
        obj = obj[key]
    if not isinstance(obj, dict):
        raise ConversionError(f"{_where(layout.path)} holds a {type(obj).__name__}, expected a state dict")
    split = _split(layout, obj)
    if split.clashes:
        raise ConversionError(f"keys that name the same trunk tensor as another once renamed to torchvision "
                              f"names ({fmt!r} renames {dict(layout.rename)})"
                              + _listing("clashing", split.as_in_file(split.clashes)))
    if split.outside:
        raise ConversionError(f"keys outside what a {fmt!r} checkpoint holds ({_known(layout)})"
                              + _listing("unexpected", split.as_in_file(split.outside)))
    differing = split.as_in_file(c for c, twin in split.copies if not _same(split.state_dict[c],
                                                                         split.state_dict.get(twin)))
    if differing:
        raise ConversionError(f"a {fmt!r} checkpoint registers its trunk twice, under {layout.trunk!r} and under "
                              f"{', '.join(map(repr, layout.copies))}, and these copies differ from (or lack) their "
                              f"twin under {layout.trunk!r}" + _listing("differing", differing))
    return split.trunk, split.dropped


def _found(obj):
    """What a file holds, for the message when no layout reads it: top-level keys and the state dicts in it."""
    found = f"top-level keys: {listing(sorted(map(str, obj)))}"
    state_dicts = {(): obj} | {(k,): v for k, v in obj.items() if isinstance(v, dict)}
    for path, state_dict in state_dicts.items():
        groups = {}
        for key, value in state_dict.items():
            if isinstance(value, torch.Tensor):
                group = str(key).removeprefix("module." if _wrapped(state_dict) else "").split(".")[0]
                groups[group] = groups.get(group, 0) + 1
        if groups:
            found += f"; {_where(path)} holds tensors {listing(f'{g}* ({n})' for g, n in groups.items())}"
    return found


def _recognise(obj):
    """(layout, exact) for a loaded checkpoint: the one layout that accounts for every key (exact), else the one
    that leaves fewest keys unexplained, whose reading then names them; an error when several layouts account for
    every key, when several are closest, or when none holds a ResNet (it says what the file holds)."""
    if not isinstance(obj, dict):
        raise ConversionError(f"not a checkpoint: holds a {type(obj).__name__}, expected a dict of tensors "
                              "or a training checkpoint dict")
    splits = {}
    for name, layout in LAYOUTS.items():
        state_dict = _state_dict_at(obj, layout.path)
        if state_dict is not None:
            split = _split(layout, state_dict)
            if all(mark in split.dropped for mark in layout.marks) and _STEM in split.trunk:
                splits[name] = split
    fits = [name for name, split in splits.items() if split.fits]
    if len(fits) == 1:
        return fits[0], True
    if fits:
        choices = "".join(f"\n  {name:<20}{LAYOUTS[name].summary}" for name in fits)
        raise ConversionError(f"the file matches {len(fits)} known layouts:{choices}\n"
                              f"name the one to read with --format (e.g. --format {fits[0]})")
    if not splits:
        raise ConversionError(f"not a recognised ResNet-50 checkpoint ({_found(obj)}); known formats: "
                              f"{', '.join(FORMATS)} (see --help)")
    fewest = min(len(split.unexplained) for split in splits.values())
    closest = [name for name, split in splits.items() if len(split.unexplained) == fewest]
    if len(closest) > 1:
        raise ConversionError("no known layout accounts for every key of the file; the closest:" + "".join(
            f"\n  {name!r} ({_known(LAYOUTS[name])}) leaves unexplained ({fewest}): "
            f"{listing(splits[name].unexplained)}" for name in closest))
    return closest[0], False


def _check_name(fmt):
    if fmt != "auto" and fmt not in LAYOUTS:
        raise ConversionError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")


def trunk_of(obj, fmt="auto"):
    """(format, torchvision-named trunk of float32 tensors, {dropped part: tensor count}) of a loaded checkpoint."""
    _check_name(fmt)
    fmt, exact = _recognise(obj) if fmt == "auto" else (fmt, True)
    # Read as the closest layout, a file fails on exactly the keys that layout leaves unexplained.
    closest = "" if exact else f"no known layout accounts for every key of the file; the closest is {fmt!r}: "
    try:
        trunk, dropped = _read(obj, fmt)
    except ConversionError as e:
        raise ConversionError(closest + str(e)) from None
    counters = sum(k.endswith(BN_COUNTER) for k in trunk)
    if counters:
        dropped[BN_COUNTER] = counters
    try:
        return fmt, check_trunk(trunk), dropped
    except ConversionError as e:
        raise ConversionError(f"{closest}as {fmt!r}: {e}") from None


def read_resnet50(path, fmt="auto"):
    """``trunk_of`` the checkpoint file ``path``, loaded without running code from it: (format, trunk, dropped).

    Raises ConversionError (naming the file) for an unreadable or unsafe file, an unknown or ambiguous layout,
    or a trunk that is not exactly ResNet-50's with finite values.
    """
    _check_name(fmt)
    try:
        obj = load_torch_file(path)
    except FileLoadError as e:
        raise ConversionError(str(e)) from None
    try:
        return trunk_of(obj, fmt)
    except ConversionError as e:
        raise ConversionError(f"{path}: {e}") from None
