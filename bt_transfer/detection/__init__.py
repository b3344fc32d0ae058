"""Detection transfer on real Detectron2: the protocol resolved from data (``protocol``, ``scaling``), the
C4 ROI head (``roi_heads``), the strict load of converted weights (``weights``), training and evaluation after
Detectron2's ``tools/train_net.py`` (``trainer``), and the per-seed runner (``runner``).
"""
