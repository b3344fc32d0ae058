"""Detection transfer on real Detectron2: the protocol resolved from data (``protocol``, ``scaling``) and its
solver values checked (``solver``), the C4 ROI head (``roi_heads``), model files loaded without running code
(``checkpoint``) and converted weights strictly (``weights``), training and evaluation after Detectron2's
``tools/train_net.py`` (``trainer``) with checkpoints that resume the same run (``resume``), and the per-seed
runner (``runner``), whose machines agree on each seed (``machines``).
"""
