"""argparse types for numeric options, checked where they enter.

Each refuses what its option cannot mean (NaN and infinities included), and argparse names the option in
its error: ``argument --lambd: expected a finite number >= 0, got nan``.
"""
import argparse
import math


def _parse(kind, text):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def _at_least(kind, low, strict):
    what = f"{'an integer' if kind is int else 'a finite number'} {'>' if strict else '>='} {low}"

    def parse(text):
        value = _parse(kind, text)
        if value < low or strict and value == low:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


positive_int = _at_least(int, 0, strict=True)
non_negative_int = _at_least(int, 0, strict=False)
positive_float = _at_least(float, 0, strict=True)
non_negative_float = _at_least(float, 0, strict=False)
