"""bt-transfer: Barlow Twins ResNet-50 pretraining and its transfer benchmarks.

Importing this package imports neither torch nor Detectron2: each submodule pulls in
only what its own concern needs (the report reads result records with the stdlib).
"""
__version__ = "0.1.0"
