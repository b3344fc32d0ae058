"""Detection transfer on real Detectron2: the protocol resolved from data (``protocol``, ``scaling``) and its
solver values checked (``solver``), the C4 ROI head (``roi_heads``), model files loaded without running code
(``checkpoint``) and converted weights strictly (``weights``), training and evaluation after Detectron2's
``tools/train_net.py`` (``trainer``) with checkpoints that resume the same run (``resume``), and the per-seed
runner (``runner``), whose machines agree on each seed (``machines``).
"""
import warnings

# Detectron2 0.6 decorates a few helpers with torch.jit.script at import, which this torch deprecates; the
# warning is about Detectron2's code, not the user's, so it is silenced here and only here, before any import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
