"""Detectron2's ``DatasetMapper`` whose image failures name the file, for every loader of a run.

The datasets are checked before training (``bt_transfer.datasets.checks``), but damage inside an image's
compressed data only shows when it is decoded, and a file can change during a run. Detectron2 then raises
PIL's ``OSError: image file is truncated`` without a path, and during PreciseBN the error is even replaced
by fvcore's ``AssertionError: Some BN layers are reused`` (its hooks stay registered and the final
evaluation trips on them). ``NamingDatasetMapper`` re-raises any failure to read or size an image as
``ImageReadError`` naming the file; ``data_error_first`` brings it back to the top when a later error
replaces it. It raises rather than returning None: Detectron2's ``MapDataset`` would silently train on
other images instead.
"""
import contextlib

from detectron2.data import DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError
from PIL import Image

from bt_transfer.datasets.layout import DatasetError


class ImageReadError(DatasetError):
    """An image that cannot be read, or not at the size its annotation states, during a run."""

    def __init__(self, message):
        # From a DataLoader worker, torch rebuilds the error from the worker's whole traceback text, whose
        # last line holds the message: keep that line, so that the error still prints as one.
        marker = f"{__name__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class NamingDatasetMapper(DatasetMapper):
    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SyntaxError, Image.DecompressionBombError, SizeMismatchError) as error:
            raise ImageReadError(
                f"{dataset_dict['file_name']} (image {dataset_dict.get('image_id')}): cannot read this image during "
                f"the run ({type(error).__name__}: {error}); fix or remove it, check the datasets "
                "(python -m bt_transfer.datasets --root ROOT) and rerun") from error


@contextlib.contextmanager
def data_error_first():
    """Re-raise the ``DatasetError`` that an exception raised while handling it (e.g. in a hook) hides."""
    try:
        yield
    except Exception as error:
        hidden = error.__context__
        while hidden is not None and not isinstance(hidden, DatasetError):
            hidden = hidden.__context__
        if isinstance(error, DatasetError) or hidden is None:
            raise
        raise hidden from None
