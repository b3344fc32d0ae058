"""Loading model files without running code from them: every model load of the suite comes through here.

A pickle can name any callable to import and call. ``.pth`` files are read with
``torch.load(weights_only=True)`` (tensors and plain containers only), Detectron2 ``.pkl`` weights with
an unpickler that builds numpy arrays and plain containers only. A file that would run code is refused,
a damaged one reported, both naming the file.
"""
import argparse
import pickle
import re
from pathlib import Path

from bt_transfer.core.errors import UserError

# What a pickle of numpy arrays needs: numpy 1.x and 2.x spellings, and protocol 2's bytes helper.
_ARRAY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
}


class FileLoadError(UserError):
    """A model file that was not loaded; the message names it and says why."""


class UnsafeFileError(FileLoadError):
    """A file whose unpickling would import and call code."""


def load_torch_file(path):
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that say what is wrong with the file.

    Besides tensors and plain containers it builds ``argparse.Namespace``: training checkpoints of DINO and timm
    store their options as one, and a Namespace only holds attributes (building it calls nothing from the file).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileLoadError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError,
            ImportError, IndexError, TypeError) as error:
        # weights_only refuses any global it does not allow-list: a callable or class the pickle would
        # import and call. Any other failure means a damaged or foreign file.
        if culprit := re.search(r"GLOBAL ([\w.]+)", str(error)):
            raise UnsafeFileError(
                f"{path}: refused: unpickling it would import and call {culprit.group(1)}, which could run "
                "arbitrary code (only tensors and plain containers are loaded). If the file comes from a "
                "trusted source, re-save just its state dict with torch.save and use that.") from None
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        raise FileLoadError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt, or not written by "
                            f"torch.save): {type(error).__name__} {reason}".rstrip()) from None


class _ArraysOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ARRAY_GLOBALS:
            raise UnsafeFileError(f"it would import and call {module}.{name}, which could run arbitrary code")
        return super().find_class(module, name)


def load_array_pickle(path):
    """The object pickled in ``path``, built from numpy arrays and plain containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileLoadError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except UnsafeFileError as error:
        raise UnsafeFileError(f"{path}: refused: {error}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OSError) as error:
        raise FileLoadError(f"{path}: not a readable pickle (truncated or corrupt): {error!r}") from None
