"""The datasets: Detectron2's builtin VOC and COCO names under a chosen root and their files (``layout``), the
contents of every annotation and image checked before training (``checks``), facts about the real splits
(``facts``), and generated data in the same layouts (``synthetic``).

Importing this package imports neither torch nor Detectron2; ``python -m bt_transfer.datasets`` checks a root.
"""
