"""What the dataset checks find: kinds of problem, each saying what was expected, and one report of them all."""
from collections import namedtuple

from bt_transfer.core.text import listing

# A kind of problem: a short name and what the data should have held instead.
Kind = namedtuple("Kind", "name expected")
# One finding: its kind and where it is (file, image or annotation id) with what was found there.
Problem = namedtuple("Problem", "kind item")

SHOWN = 5  # findings shown per kind; the rest are counted


def report(found):
    """The text of a failed check: ``found`` maps a dataset's title to its problems (titles without any are
    left out); problems are grouped by kind, counted, and the first few of each kind shown."""
    total = sum(map(len, found.values()))
    lines = [f"the datasets fail their checks ({total} problem{'s' * (total != 1)}); fix them and rerun:"]
    for title, problems in found.items():
        if not problems:
            continue
        lines.append(f"{title}:")
        by_kind = {}
        for problem in problems:
            by_kind.setdefault(problem.kind, []).append(problem.item)
        for kind, items in by_kind.items():
            lines.append(f"  {kind.name} x{len(items)} (expected {kind.expected}): {listing(items, shown=SHOWN)}")
    return "\n".join(lines)
