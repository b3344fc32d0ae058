"""Small text helpers for messages."""


def listing(items, shown=12):
    """``a, b, c (and 9 more)``: the first ``shown`` items of a list that may be long."""
    items = [str(item) for item in items]
    more = f" (and {len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
