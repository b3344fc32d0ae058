"""Load converted backbone weights into a built Detectron2 model, and prove nothing was skipped.

``DetectionCheckpointer`` with name-matching heuristics only logs what it could not place: a
checkpoint key that matches no model key, or matches one of another shape, simply vanishes,
and the model keeps its random initialisation. After the load, every model tensor must come
from the checkpoint except the heads a detector trains from scratch, and every checkpoint
tensor must have been used; anything else raises. The ``.pkl`` itself is read by ``SafeCheckpointer``,
with an unpickler that builds numpy arrays and nothing else (Detectron2's own loader would run any
callable the pickle names).
"""
from pathlib import Path

from bt_transfer.convert.resnet50 import BN_COUNTER
from bt_transfer.core.errors import UserError
from bt_transfer.detection.checkpoint import CheckpointError, SafeCheckpointer

# What a converted ResNet-50 does not provide: the RPN, the box predictor, the mask head and,
# with Res5ROIHeadsExtraNorm, the norm after res5 (bt_transfer.roi_heads).
FROM_SCRATCH = ("proposal_generator.", "roi_heads.box_predictor.", "roi_heads.mask_head.", "roi_heads.res5.norm.")


class WeightsLoadError(UserError, RuntimeError):
    """Converted weights that did not initialise the model as the protocol requires."""


class _RecordingCheckpointer(SafeCheckpointer):
    """Keeps what ``_load_model`` reports instead of only logging it (fvcore's hook for subclasses)."""

    def _load_model(self, checkpoint):
        self.checkpoint_keys = sorted(checkpoint["model"])
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_backbone_weights(model, path):
    """Load the converted weights ``path`` (from ``python -m bt_transfer.convert``) into ``model``.

    Returns the sorted names of the model's parameters and buffers NOT initialised from the
    file (all under FROM_SCRATCH). Raises WeightsLoadError naming any other model tensor left
    uninitialised, any mis-shaped one and any checkpoint tensor that went unused.
    """
    path = Path(path)
    if path.suffix != ".pkl":
        raise WeightsLoadError(f"{path}: expected converted weights (.pkl); convert the checkpoint first with "
                               "`python -m bt_transfer.convert INPUT OUTPUT.pkl`")
    checkpointer = _RecordingCheckpointer(model)
    try:
        checkpointer.load(str(path))
    except CheckpointError as e:
        raise WeightsLoadError(str(e)) from None
    incompatible = checkpointer.incompatible

    loaded = set(model.state_dict()) - set(incompatible.missing_keys)
    not_loaded = sorted(k for k in incompatible.missing_keys if not k.endswith(BN_COUNTER))
    unexpected = [k for k in not_loaded if not k.startswith(FROM_SCRATCH)]
    # The heuristics place a checkpoint key on the model key it is a dotted suffix of.
    unused = [k for k in checkpointer.checkpoint_keys
              if not any(m == k or m.endswith("." + k) for m in loaded)]
    misshaped = [f"{k} {tuple(ckpt)} (model {tuple(want)})" for k, ckpt, want in incompatible.incorrect_shapes]
    problems = [f"\n  {label} ({len(keys)}): {', '.join(keys)}" for label, keys in (
        ("model tensors not initialised", unexpected),
        ("checkpoint tensors not used", sorted(set(unused) | set(incompatible.unexpected_keys))),
        ("mis-shaped", misshaped)) if keys]
    if problems:
        raise WeightsLoadError(f"{path}: the weights do not fit this model (only {', '.join(FROM_SCRATCH)} may "
                               "start from scratch):" + "".join(problems))
    return not_loaded
