"""The per-pair checks of the curation: reading a pair quickly, the photo statistics the reasons
are judged on, byte duplicates, and the dataset's own integrity check sorted by problem kind."""
import hashlib
import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from jspade.data.datasets import build_dataset
from jspade.data.labels import LANDSCAPE_IDS
from jspade.curation.reasons import CurationOptions
from jspade.data.readers import DataError
from jspade.data.validate import validate_samples

SKY = LANDSCAPE_IDS["sky"]
DARK_SUM = 90  # pixels with R+G+B below this have no reliable chromaticity: not judged


# ---- photo statistics ----------------------------------------------------------------------------

def luma(rgb):
    """Rec. 601 luma (0..255 float32) of an HxWx3 uint8 RGB image."""
    rgb = np.asarray(rgb, np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def colorfulness(rgb):
    """Mean |R-G| + |G-B| over the image (0 for a gray image, up to 510)."""
    rgb = np.asarray(rgb, np.int16)
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])))


def backlight_score(rgb, label, sky_id=SKY, min_sky_fraction=CurationOptions.min_sky_fraction):
    """Median luma of the non-sky pixels over that of the sky pixels (by the label), or None when
    the sky or the rest covers less than `min_sky_fraction`. Small = dark land under a bright sky."""
    sky = np.asarray(label) == sky_id
    fraction = sky.mean()
    if fraction < min_sky_fraction or fraction > 1 - min_sky_fraction:
        return None
    y = luma(rgb)
    return float(np.median(y[~sky]) / max(float(np.median(y[sky])), 1.0))


def clipped_fraction(rgb, level=250):
    """Fraction of pixels with a channel at or above `level` (blown-out highlights)."""
    return float((np.asarray(rgb).max(axis=-1) >= level).mean())


def contrast(rgb):
    """RMS contrast: the standard deviation of the luma (0..255)."""
    return float(luma(rgb).std())


def color_channels(rgb):
    """HxWx3 uint8 (r, g, brightness): chromaticity R/(R+G+B), G/(R+G+B) scaled to 0..255, which a
    change of exposure leaves unchanged, and the mean of R, G, B; plus the mask of pixels bright
    enough for their chromaticity to mean something."""
    rgb = np.asarray(rgb, np.float32)
    total = rgb.sum(axis=-1)
    safe = np.maximum(total, 1.0)
    out = np.stack([rgb[..., 0] / safe * 255, rgb[..., 1] / safe * 255, total / 3], axis=-1)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), total >= DARK_SUM


def interior_mask(label):
    """Pixels whose 4 neighbours have the same class (labels are never exact at boundaries)."""
    label = np.asarray(label)
    same = np.ones(label.shape, bool)
    same[1:] &= label[1:] == label[:-1]
    same[:-1] &= label[:-1] == label[1:]
    same[:, 1:] &= label[:, 1:] == label[:, :-1]
    same[:, :-1] &= label[:, :-1] == label[:, 1:]
    return same


def color_stats(rgb):
    """Six numbers summarising a photo's colour: mean and standard deviation of L, a, b (CIELAB)."""
    lab = cv2.cvtColor(np.ascontiguousarray(rgb, np.uint8), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return np.concatenate([lab.mean(axis=0), lab.std(axis=0)])


# ---- reading -------------------------------------------------------------------------------------

def file_hash(data: bytes):
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def decode_photo(data: bytes, min_size):
    """Decode a photo as HxWx3 uint8 RGB, letting the JPEG decoder skip detail: the result is at
    least `min_size` = (W, H) (or the full picture when smaller), which is what makes reading
    10,000 1024x768 photos fast."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            image.draft("RGB", tuple(int(v) for v in min_size))
        image.load()
        if image.mode.startswith("I;16"):
            gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
            return np.repeat(gray[:, :, None], 3, axis=2)
        return np.asarray(image.convert("RGB"))


def resize_photo(rgb, size):
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return cv2.resize(rgb, tuple(size), interpolation=cv2.INTER_AREA)


def resize_label(label, size):
    if (label.shape[1], label.shape[0]) == tuple(size):
        return label
    return np.asarray(Image.fromarray(label.astype(np.int32)).resize(tuple(size), Image.NEAREST))


# ---- integrity and byte duplicates ---------------------------------------------------------------

def check_integrity(data_dir, progress=True):
    """Run `jspade.data.validate` on the landscape dataset at `data_dir`.

    Returns (dataset, {stem: [(reason, message), ...]}, [dataset-level messages]); the reason of a
    problem is its kind (`jspade.data.readers.PROBLEM_KINDS`).
    """
    dataset = build_dataset("landscape", data_dir, strict=False)
    if not dataset.has_images:
        raise DataError(f"{data_dir}: no imgs/ folder beside labels/ (curation needs the photos)", data_dir)
    problems = list(dataset.problems) + validate_samples(dataset, progress)
    by_path = {}
    for sample in dataset.samples:
        by_path[str(sample.label_path)] = sample.stem
        by_path[str(sample.image_path)] = sample.stem
    folders = {str(Path(data_dir) / "labels"), str(Path(data_dir) / "imgs")}
    folders |= {str(Path(p).parent) for p in by_path}
    bad, general = {}, []
    for problem in problems:
        where = str(problem.where)
        if where in by_path:
            stem = by_path[where]
        elif str(Path(where).parent) in folders:
            stem = Path(where).stem
        elif "/" not in where and "\\" not in where:
            stem = where  # missing pairs are named by stem
        else:
            general.append(str(problem))
            continue
        bad.setdefault(stem, []).append((problem.kind, f"{Path(where).name}: {problem.reason}"))
    return dataset, bad, general


def find_byte_duplicates(hashes):
    """hashes: list of (stem, digest) in processing order -> {stem: first stem with that digest}."""
    first, dups = {}, {}
    for stem, digest in hashes:
        if digest in first:
            dups[stem] = first[digest]
        else:
            first[digest] = stem
    return dups
