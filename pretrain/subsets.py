"""The labelled subsets of semi-supervised evaluation (SimCLR's file lists, or a seeded class-balanced draw), and
the kNN monitor's class-balanced bank.

A subset is a list of image paths relative to the ImageFolder's ``train/`` root, ``<class>/<file>``.
SimCLR's ``1percent.txt`` / ``10percent.txt`` (google-research/simclr, ``imagenet_subsets/``) hold one
file name per line, ``n01440764_10026.JPEG``, whose class is the part before the first ``_``; a line
that already contains a ``/`` is taken as ``<class>/<file>``, which is the form ``write_subset_file``
uses, so a generated subset can be passed back as a subset file.

Pure functions on strings: the caller lists the ImageFolder and maps the result to sample indices.
"""
import random
from collections import defaultdict
from pathlib import Path, PurePosixPath

from bt_transfer.core.errors import UserError
from bt_transfer.core.text import listing

# Lines in SimCLR's lists: 1% and 10% of ImageNet-1k's 1,281,167 training images (TFDS imagenet2012_subset
# documents the same counts; most classes get the same number of images, some one more).
SIMCLR_SUBSET_IMAGES = {1: 12811, 10: 128116}
SIMCLR_URL = "https://github.com/google-research/simclr/tree/master/imagenet_subsets"


class SubsetError(UserError, ValueError):
    """A subset that cannot be used; the message names the file and what was expected."""


def parse_subset_line(line):
    """``n01440764_10026.JPEG`` -> ``n01440764/n01440764_10026.JPEG``; ``cls/file`` is kept as is."""
    if "/" in line:
        return line
    return f"{line.split('_', 1)[0]}/{line}"


def read_subset_file(path):
    """The relative paths a subset file lists, in file order.

    Refuses a missing file (nothing is downloaded), an empty one, duplicated entries and paths
    that would leave the ImageFolder, so a list is either honoured exactly or not at all.
    """
    path = Path(path)
    if not path.is_file():
        raise SubsetError(
            f"subset file {path} does not exist: pass SimCLR's 1percent.txt / 10percent.txt "
            f"(download it yourself from {SIMCLR_URL}) or omit --subset-file to draw a seeded subset"
        )
    entries, seen = [], {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        relative = parse_subset_line(line)
        parts = PurePosixPath(relative).parts
        if len(parts) != 2 or ".." in parts or relative.startswith("/"):
            raise SubsetError(f"{path}:{number}: {line!r} is not a file name like "
                              f"'n01440764_10026.JPEG' or '<class>/<file>'")
        if relative in seen:
            raise SubsetError(f"{path}:{number}: {line!r} repeats line {seen[relative]}")
        seen[relative] = number
        entries.append(relative)
    if not entries:
        raise SubsetError(f"subset file {path} lists no images")
    return entries


def balanced_subset(files, percent, seed):
    """A class-balanced draw of about ``percent`` % of ``files`` (``<class>/<file>`` strings).

    Every class gets the same number of images, round(percent% of all images / classes) and at
    least one, as SimCLR's lists are balanced (see ``per_class_subset``).
    """
    classes = len({PurePosixPath(relative).parts[0] for relative in files})
    per_class = max(1, round(len(files) * percent / 100 / max(classes, 1)))  # no files: per_class_subset says so
    return per_class_subset(files, per_class, seed)


def per_class_subset(files, per_class, seed):
    """``per_class`` images of every class of ``files`` (``<class>/<file>`` strings), drawn with ``seed``.

    The draw depends only on ``seed`` and the set of files (not their order), so the same seed on the
    same folder gives the same subset.
    """
    by_class = defaultdict(list)
    for relative in files:
        by_class[PurePosixPath(relative).parts[0]].append(relative)
    if not by_class:
        raise SubsetError("cannot draw a subset from an empty training set")
    rng = random.Random(seed)
    chosen = []
    for name in sorted(by_class):
        members = sorted(by_class[name])
        if len(members) < per_class:
            raise SubsetError(f"class {name!r} has {len(members)} training images, fewer than the "
                              f"{per_class} per class a balanced subset needs")
        chosen.extend(sorted(rng.sample(members, per_class)))
    return chosen


def subset_indices(files, subset, source, root):
    """Indices into ``files`` (the ImageFolder's relative paths) of every entry of ``subset``.

    Any listed image absent from ``root`` is an error naming the first few and the count: a
    silently smaller subset would make the result incomparable with the published one.
    """
    position = {relative: index for index, relative in enumerate(files)}
    missing = [relative for relative in subset if relative not in position]
    if missing:
        raise SubsetError(f"{source}: {len(missing)} of {len(subset)} listed images are not in {root}: "
                          f"{listing(missing, shown=5)}")
    return [position[relative] for relative in subset]


def format_subset(subset):
    """The text of a subset file in the ``<class>/<file>`` form ``read_subset_file`` accepts."""
    return "".join(f"{relative}\n" for relative in subset)
