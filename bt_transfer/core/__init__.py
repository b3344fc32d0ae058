"""The shared kernel: what every stage of the suite, ``pretrain/`` included, builds on.

Atomic files and hashes (``fileio``), progress lines and JSON-lines metrics (``progress``), the result
record every runner writes and the report reads (``records``), the paper's pretraining settings and how a
backbone departs from them (``provenance``), the one error type a user can act on (``errors``), and the
loaders that never run code from a file (``safe_load``, the only module here that needs torch).
"""
