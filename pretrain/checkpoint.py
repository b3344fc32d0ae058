"""Pretraining checkpoints (resumable state) and the exported backbone.

``checkpoint.pth`` holds everything a resumed run needs to continue bit-exactly: the optimizer step
count, the model, LARS momentum, the AMP grad scaler and the RNG states, all as tensors and plain
types so it loads with ``torch.load(..., weights_only=True)``. It is replaced atomically (temporary
file + rename), so a run killed while saving leaves the previous checkpoint intact.

``resnet50.pth`` is the official export: the backbone's state dict with plain torchvision keys and
no ``fc`` (the backbone's fc is an Identity), loadable into ``torchvision.models.resnet50()``.
"""
from pathlib import Path

import torch

from bt_transfer.core.errors import UserError
from bt_transfer.core.fileio import atomic_write
from bt_transfer.core.safe_load import FileLoadError, load_torch_file

CHECKPOINT_FILE = "checkpoint.pth"
BACKBONE_FILE = "resnet50.pth"
FORMAT = 1
REQUIRED_KEYS = ("format", "step", "steps_per_epoch", "global_batch", "projector", "model", "optimizer", "rng")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed from; the message names the file."""


def save_atomically(path, obj):
    """``torch.save`` to a temporary file renamed over ``path``: a kill never leaves a torn checkpoint."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def load_state(path):
    """The state saved in ``path`` (loaded with ``weights_only=True``), or a CheckpointError naming the file."""
    try:
        return load_torch_file(path)
    except FileLoadError as error:
        raise CheckpointError(f"{error}. Move it away to start over") from None


def save_checkpoint(path, *, step, steps_per_epoch, global_batch, projector, model, optimizer, scaler):
    """Atomically write the resumable state after ``step`` optimizer steps."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_atomically(path, {
        "format": FORMAT,
        "step": step,
        "steps_per_epoch": steps_per_epoch,
        "global_batch": global_batch,
        "projector": projector,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "rng": rng,
    })


def read_checkpoint(path):
    """The checkpoint dict, or a CheckpointError naming the file (truncated, not a checkpoint, wrong format)."""
    path = Path(path)
    state = load_state(path)
    if not isinstance(state, dict) or (missing := [k for k in REQUIRED_KEYS if k not in state]):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a bt-transfer pretraining checkpoint "
                              f"(missing {missing or REQUIRED_KEYS}; found {found})")
    if state["format"] != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']}, this code reads format {FORMAT}")
    return state


def resume(path, *, model, optimizer, scaler, steps_per_epoch, global_batch, projector):
    """Load ``path`` into model, optimizer and scaler (all on their devices already); return the step.

    Refuses a checkpoint of another architecture or of another schedule (batch size, dataset size),
    because continuing it would silently train something else than was asked.
    """
    state = read_checkpoint(path)
    if state["projector"] != projector:
        raise CheckpointError(f"{path}: checkpoint of another architecture: projector {state['projector']!r}, "
                              f"this run asks for {projector!r}")
    if (state["steps_per_epoch"], state["global_batch"]) != (steps_per_epoch, global_batch):
        raise CheckpointError(
            f"{path}: written with global batch {state['global_batch']} and {state['steps_per_epoch']} steps per "
            f"epoch, this run has {global_batch} and {steps_per_epoch}: resume with the same --batch-size and --data")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: checkpoint of another architecture: {error}") from error
    optimizer.load_state_dict(state["optimizer"])
    if scaler.is_enabled() and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["rng"]["cuda"])
    return int(state["step"])


def remove_stale_temporaries(folder):
    """Delete the temporary files of checkpoint writes that a killed run left behind (each as big as a checkpoint)."""
    for stale in Path(folder).glob(f".{CHECKPOINT_FILE}.*.tmp"):
        stale.unlink(missing_ok=True)


def export_backbone(model, path):
    """Atomically write the backbone's state dict (torchvision keys, no ``fc``): the official ``resnet50.pth``."""
    state = {key: value.detach().cpu().clone() for key, value in model.backbone.state_dict().items()}
    save_atomically(path, state)
    return path
