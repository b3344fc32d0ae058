"""Detection transfer on real Detectron2: the protocol resolved from data (``protocol``, ``scaling``), the
C4 ROI head (``roi_heads``), the strict load of converted weights (``weights``), training and evaluation after
Detectron2's ``tools/train_net.py`` (``trainer``), and the per-seed runner (``runner``).
"""
import warnings

# Detectron2 0.6 decorates a few helpers with torch.jit.script at import, which this torch deprecates; the
# warning is about Detectron2's code, not the user's, so it is silenced here and only here, before any import.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
