"""bt-transfer: Barlow Twins ResNet-50 pretraining and its transfer benchmarks.

Layers, each importing only those above it: ``core`` (the shared kernel, also used by ``pretrain/``), then
``convert`` (any ResNet-50 checkpoint, plain torch) and ``datasets``, then ``detection`` (Detectron2) and
``report`` (stdlib and matplotlib). The top-level modules are command entry points and the demo. Importing
this package imports neither torch nor Detectron2.
"""
import warnings

__version__ = "0.1.0"

# Detectron2 0.6 decorates a few helpers with torch.jit.script at import, which this torch deprecates. The warning
# is about Detectron2's code, not the user's; every Detectron2 import of the suite comes after this line.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
