"""Reading label maps, photos and instance maps from disk as numpy arrays.

Every reader raises `DataError` naming the file, so a broken file in a dataset of thousands is found
from the message alone. Label and instance maps keep their integer values: a 16-bit label must not
go through an 8-bit conversion (PIL's `convert('L')` clips, `astype(uint8)` wraps), which would
silently corrupt class ids.
"""
import errno
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from jspade.errors import JspadeError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Labels must be lossless: a JPEG label would invent class ids at every boundary.
LABEL_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")

# PIL modes whose pixel values are integer ids (np.array keeps them unchanged).
_ID_MODES = {"L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N", "1"}


# What kind of fault a Problem (or DataError) is, named where it is found: curation sorts problems
# by kind, never by their wording.
PROBLEM_KINDS = ("unreadable", "missing_pair", "size_mismatch", "bad_class_id", "duplicate_stem", "integrity")


def natural_key(text):
    """Sort key that puts 'img2' before 'img10'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", str(text))]


def list_files(folder, extensions, recursive=False):
    """Files directly in (or below) `folder` whose suffix is in `extensions`, naturally sorted by
    name: the one folder listing of the project (datasets, inference, FID, scores)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: directory not found", folder)
    found = folder.rglob("*") if recursive else folder.iterdir()
    listed = [p for p in found if p.suffix.lower() in extensions and not p.name.startswith(".")]
    for p in listed:
        try:
            str(p).encode("utf-8")
        except UnicodeEncodeError:  # it could not be named in a subset file, report or log
            raise DataError(f"{ascii(str(p))[1:-1]}: the file name is not valid UTF-8; rename it", None,
                            "unreadable") from None
        if p.is_symlink() and not p.exists():  # a loop or a dangling link: say so, never skip it silently
            try:
                p.stat()
                reason = "unreadable symbolic link"
            except OSError as error:
                reason = "symbolic link loop" if error.errno == errno.ELOOP else "broken symbolic link"
            raise DataError(f"{p}: {reason}", p, "unreadable")
    return sorted((p for p in listed if p.is_file()), key=lambda p: natural_key(p.name))


class DataError(JspadeError, ValueError):
    """A dataset file is missing, unreadable or holds values the model cannot use."""

    def __init__(self, message, path=None, kind="integrity"):
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.kind = kind


def open_image(path):
    """Open and fully decode an image (a truncated file fails here, not later in a transform)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found", path, "unreadable")
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for bad files
        raise DataError(f"{path}: cannot read image ({type(error).__name__}: {error})", path,
                        "unreadable") from error
    return image


def _read_ids(path, what):
    image = open_image(path)
    if image.mode not in _ID_MODES:
        raise DataError(
            f"{path}: {what} has mode {image.mode!r}; expected a single-channel map of integer ids "
            "(8/16-bit grayscale or palette PNG). Colour-coded maps must be converted to ids first.",
            path, "unreadable")
    return np.asarray(image).astype(np.int32)  # palette PNGs give their indices


def read_label(path) -> np.ndarray:
    """Class-id map as int32 HxW; 8-bit, 16-bit and palette (index) PNGs are accepted."""
    return _read_ids(path, "label map")


def read_instance(path) -> np.ndarray:
    """Instance-id map as int32 HxW (8-, 16- or 32-bit)."""
    return _read_ids(path, "instance map")


def read_image(path) -> np.ndarray:
    """Photo as HxWx3 uint8 RGB (grayscale, palette, RGBA and CMYK are converted)."""
    image = open_image(path)
    if image.mode.startswith("I;16"):  # 16-bit grayscale photo: keep the high byte
        gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


class Problem(NamedTuple):
    """One fault found in a dataset: the file (or the stem, for a missing pair), what is wrong, and
    its kind (one of PROBLEM_KINDS)."""
    where: str
    reason: str
    kind: str = "integrity"

    def __str__(self):
        return f"{self.where}: {self.reason}"
