"""Image files as Detectron2 will read them: present, whole, and of the size their annotation states.

Opening an image reads its header only (no pixels). A file cut short, the usual damage of an interrupted
copy, keeps an intact header, so the file's last bytes are read too: JPEG and PNG files end with a fixed
marker. Only a file without it (or of another format) is decoded in full, which decides as training would.
Damage inside the compressed data of an otherwise whole file shows when training decodes it, and
``bt_transfer.detection.mapper`` then stops the run naming the file.
"""
import os

from PIL import Image

from bt_transfer.datasets.problems import Kind, Problem

MISSING = Kind("missing image", "a file at the path the annotation lists")
UNDECODABLE = Kind("undecodable image", "an image file PIL decodes")
WRONG_SIZE = Kind("image size differs from its annotation",
                  "the width x height the annotation states, after EXIF orientation as Detectron2 applies it")

# The last bytes of a whole file of these formats.
ENDINGS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = {5, 6, 7, 8}  # EXIF orientations that Detectron2's read_image turns by 90 degrees


def _orientation(image):
    try:
        return image.getexif().get(EXIF_ORIENTATION)
    except Exception:  # Detectron2 ignores an unreadable EXIF block the same way
        return None


def _ends_whole(path, ending):
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(ending):
            return False
        f.seek(-len(ending), os.SEEK_END)
        return f.read() == ending


def image_problem(path, item, width=None, height=None):
    """A Problem if ``path`` is missing, does not decode, or is not ``width`` x ``height`` (when given), else None.

    ``item`` names the image in the problem (e.g. its path under the dataset folder and its id).
    """
    try:
        with Image.open(path) as image:
            size = image.size[::-1] if _orientation(image) in SWAPS_SIDES else image.size
            ending = ENDINGS.get(image.format)
            if ending is None or not _ends_whole(path, ending):
                image.load()
    except FileNotFoundError:
        return Problem(MISSING, item)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return Problem(UNDECODABLE, f"{item} ({error})")
    if width is not None and size != (width, height):
        return Problem(WRONG_SIZE, f"{item} is {size[0]}x{size[1]} (annotation: {width}x{height})")
    return None
