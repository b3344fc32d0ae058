"""Barlow Twins pretraining and ImageNet evaluation (linear, semi-supervised). Never imports Detectron2."""
