"""The strict converter: any ResNet-50 checkpoint layout (``layouts``, read by ``formats``), checked against
ResNet-50 (``resnet50``), as a Detectron2 C4 backbone (``detectron2``). Plain torch, never Detectron2;
``python -m bt_transfer.convert``.
"""
