"""Detectron2's checkpointer with the suite's safe loaders: every detection model load comes through here.

Detectron2 0.6 reads ``.pkl`` files with plain ``pickle.load`` (any callable the file names runs) and follows
``OUTPUT_DIR/last_checkpoint`` wherever it points. ``SafeCheckpointer`` reads ``.pkl`` with the arrays-only
unpickler and ``.pth`` with ``torch.load(weights_only=True)`` (``bt_transfer.core.safe_load``), resumes only
from a checkpoint inside its own folder, and checks that every process can read a file before any loads it
(instead of Detectron2's fallback, which calls ``DistributedDataParallel._sync_params_and_buffers``, a method
torch 2.14 no longer has).
"""
import os
from pathlib import Path

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils import comm
from fvcore.common.checkpoint import Checkpointer

from bt_transfer.core.errors import UserError
from bt_transfer.core.safe_load import FileLoadError, load_array_pickle, load_torch_file
from bt_transfer.core.text import listing


class CheckpointError(UserError, RuntimeError):
    """A model file or checkpoint that is not loaded; the message names it and says why."""


class SafeCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` (saving, name matching, model-zoo conventions) that never runs code from a file."""

    def load(self, path, checkpointables=None):
        if path:
            # Every process must read the same file (one that cannot would train from other weights), and
            # only local files are read: fvcore would download a URL.
            seen = comm.all_gather(os.path.isfile(path))
            if not any(seen):
                raise CheckpointError(f"{path}: no such file")
            if not all(seen):
                blind = [rank for rank, has_file in enumerate(seen) if not has_file]
                raise CheckpointError(f"{path}: not readable by process(es) {listing(blind)} of this run; the run "
                                      "folder and the weights must be on storage every machine sees")
        # fvcore's load: DetectionCheckpointer.load would take the DDP fallback described above.
        return Checkpointer.load(self, path, checkpointables)

    def _load_file(self, filename):
        suffix = Path(filename).suffix
        try:
            if suffix == ".pkl":
                data = load_array_pickle(filename)
            elif suffix == ".pth":
                data = load_torch_file(filename)
            else:
                raise CheckpointError(f"{filename}: expected a .pth checkpoint or converted .pkl weights "
                                      "(python -m bt_transfer.convert)")
        except FileLoadError as e:
            raise CheckpointError(str(e)) from None
        if suffix == ".pkl" and not (isinstance(data, dict) and isinstance(data.get("model"), dict)
                                     and "__author__" in data):
            # Detectron2 would read it as Caffe2 model-zoo weights: BGR input, stride in the 1x1
            # conv, other pixel statistics; the suite's configs follow torchvision's conventions.
            raise CheckpointError(f"{filename}: not Detectron2-format weights ({{'model': ..., '__author__': ...}}); "
                                  "a Caffe2 / model-zoo pickle follows other conventions than this suite's "
                                  "configs. Convert a torchvision-style checkpoint with python -m bt_transfer.convert")
        if not isinstance(data, dict):
            raise CheckpointError(f"{filename}: expected a dict of tensors, found {type(data).__name__}")
        return data if "model" in data else {"model": data}

    def get_checkpoint_file(self):
        """The checkpoint ``last_checkpoint`` names; refused unless it is a file of this folder."""
        named = super().get_checkpoint_file()
        if not named:
            return named
        folder = Path(self.save_dir).resolve()
        if Path(named).resolve().parent != folder:
            raise CheckpointError(f"{Path(self.save_dir) / 'last_checkpoint'} names {named}, outside its run folder; "
                                  "a run resumes only from its own checkpoints (delete that file to start over)")
        return named
