"""Curate the landscape training data into Selection I and Selection II, reproducibly.

    report = curate("datasets/landscape/train", "curation/", CurationOptions(segmenter="seg.pkl"))

writes into the output folder (never into the data folder):
  selection1.txt   stems without errors: integrity faults, byte duplicates, grayscale photos,
                   labels that disagree with their photo (colour statistics, optionally a segmenter)
  selection2.txt   Selection I minus backlit / over-exposed / low-contrast photos, with each group of
                   near-identical label maps reduced to the `near_dup_keep` most typical photos
  report.json      every rejected stem with its reasons and scores, the thresholds, counts, timing
  scores.csv       every stem's scores (for calibrating the thresholds on real data)
  sheets/<reason>_NN.jpg   contact sheets (photo | coloured label, stem and score) for review

Both selection files are subset files for `read_subset` (one stem per line, '#' comments).

Stages (each a small function below, each with a progress bar):
  1. integrity  -- `jspade.data.validate` on the dataset (unreadable/missing/mismatched/out of range)
  2. reading    -- one pass over the photos (JPEG decoded at reduced size) and labels: file hashes,
                   downsized copies (`work_size`, 128x96) and the per-image statistics
  3. duplicates -- byte-identical photos or labels (the first stem in natural order is kept)
  4. colour     -- per-class colour models fitted over the whole dataset from the labels (median
                   and MAD of exposure-invariant chromaticity r, g plus brightness), then the
                   fraction of each class's pixels far from its model
  5. near-dups  -- label maps with >= `near_dup_similarity` pixel agreement, found without comparing
                   all pairs: a sort-and-sweep on class histograms and a block-histogram bound (both
                   lossless: pixel agreement a implies an L1 histogram distance <= 2(1 - a)) select
                   the candidates; exact agreement decides; groups are stars around a centre
                   (greedy, most-connected first), so similarity cannot chain through a group
  6. output     -- selections, report, scores, contact sheets

Everything is deterministic: stems are processed in natural order, there is no randomness, and
report.json differs between two runs only in its "timing" entry.
"""
import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from jspade.data.datasets import build_dataset, natural_key
from jspade.data.readers import DataError, read_label
from jspade.data.labels import LANDSCAPE_IDS, LANDSCAPE_NAMES, colorize
from jspade.data.validate import validate_samples
from jspade.atomic import atomic_path, write_bytes_atomic

FORMAT = "jspade-curation-1"
SKY = LANDSCAPE_IDS["sky"]
IGNORE = 255  # class value of colour-sample pixels that are not judged (boundary, too dark)

# Reasons in report order, and whether they exclude a stem from Selection I (all exclude from II).
REASONS = {
    "unreadable": (True, "photo or label cannot be decoded, or a colour-coded label"),
    "missing_pair": (True, "photo without label or label without photo"),
    "size_mismatch": (True, "photo and label differ in size"),
    "bad_class_id": (True, "label holds class ids outside 0..label_nc-1"),
    "duplicate_stem": (True, "two files of one kind for one stem (e.g. a.png and a.bmp)"),
    "integrity": (True, "other problem reported by jspade.data.validate"),
    "duplicate_photo": (True, "photo byte-identical to an earlier stem's photo"),
    "duplicate_label": (True, "label byte-identical to an earlier stem's label"),
    "grayscale": (True, "photo channels nearly equal"),
    "color_mismatch": (True, "most pixels of a class are far from that class's colour model"),
    "segmenter_disagreement": (True, "segmenter prediction on the photo disagrees with the label"),
    "backlit": (False, "foreground much darker than the sky"),
    "clipped_highlights": (False, "large fraction of blown-out pixels"),
    "low_contrast": (False, "very low luminance contrast"),
    "near_duplicate": (False, "one of a group of near-identical label maps beyond the kept K"),
}

# Colour model: channels (r, g chromaticity x 255; brightness), per-channel weight in the distance,
# and the smallest scale (so a class with a very narrow distribution does not flag every tint).
# Brightness only contributes a little: exposure varies too much between photos (and a backlit
# photo must not look like a label error), while chromaticity does not change with exposure.
COLOR_CHANNELS = ("r", "g", "brightness")
COLOR_WEIGHTS = np.array([1.0, 1.0, 0.25], np.float32)
COLOR_SCALE_FLOOR = np.array([4.0, 4.0, 24.0], np.float32)
DARK_SUM = 90          # pixels with R+G+B below this have no reliable chromaticity: not judged
MIN_MODEL_IMAGES = 10  # a class seen in fewer (clean) images has no colour model
MIN_CLASS_SAMPLES = 20  # judged pixels a class needs in an image to be scored there


@dataclass
class CurationOptions:
    """Thresholds (each has a flag in scripts/clean_dataset.py) and run settings."""
    work_size: tuple = (128, 96)          # (W, H) downsized copy for all statistics
    gray_threshold: float = 6.0           # grayscale if mean |R-G| + |G-B| (0..510) is below
    color_distance: float = 4.0           # a pixel is an outlier beyond this distance (robust sigmas)
    color_outlier_fraction: float = 0.5   # ... flagged when this fraction of a class's pixels are
    color_min_class_fraction: float = 0.05  # only classes covering at least this image fraction
    segmenter: Optional[str] = None       # checkpoint of scripts/train_segmenter.py, or None
    segmenter_agreement: float = 0.5      # flagged when pixel agreement with the label is below
    backlight_ratio: float = 0.2          # backlit when median luma of non-sky / sky is below
    min_sky_fraction: float = 0.05        # ... and the sky covers at least this fraction
    clipped_fraction: float = 0.4         # clipped_highlights when this fraction has a channel >= 250
    min_contrast: float = 10.0            # low_contrast when the luma standard deviation is below
    near_dup_similarity: float = 0.95     # label maps with at least this pixel agreement are near-dups
    near_dup_keep: int = 2                # near-dups kept per group in Selection II
    dup_size: tuple = (64, 48)            # (W, H) common size of the near-duplicate comparison
    sheet_columns: int = 4
    sheet_rows: int = 8
    overwrite: bool = False
    progress: bool = True

    def thresholds(self):
        skip = {"overwrite", "progress", "sheet_columns", "sheet_rows"}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if k not in skip}


# ---- small per-image checks ----------------------------------------------------------------------

def luma(rgb):
    """Rec. 601 luma (0..255 float32) of an HxWx3 uint8 RGB image."""
    rgb = np.asarray(rgb, np.float32)
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def colorfulness(rgb):
    """Mean |R-G| + |G-B| over the image (0 for a gray image, up to 510)."""
    rgb = np.asarray(rgb, np.int16)
    return float(np.mean(np.abs(rgb[..., 0] - rgb[..., 1]) + np.abs(rgb[..., 1] - rgb[..., 2])))


def is_grayscale(rgb, threshold=CurationOptions.gray_threshold):
    return colorfulness(rgb) < threshold


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


def label_agreement(a, b):
    """Fraction of pixels where two equally sized label maps have the same class."""
    return float(np.mean(np.asarray(a) == np.asarray(b)))


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


# ---- integrity -----------------------------------------------------------------------------------

def integrity_reason(message):
    """The report reason of a `jspade.data.validate` problem message."""
    m = message.lower()
    if "missing pair" in m:
        return "missing_pair"
    if "out of range" in m:
        return "bad_class_id"
    if "differs from" in m:
        return "size_mismatch"
    if "second " in m:
        return "duplicate_stem"
    if "cannot read" in m or "not found" in m or "single-channel" in m:
        return "unreadable"
    return "integrity"


def check_integrity(data_dir, progress=True):
    """Run `jspade.data.validate` on the landscape dataset at `data_dir`.

    Returns (dataset, {stem: [(reason, message), ...]}, [dataset-level messages]).
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
        bad.setdefault(stem, []).append((integrity_reason(problem.reason), f"{Path(where).name}: {problem.reason}"))
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


# ---- colour models -------------------------------------------------------------------------------

@dataclass
class ColorModel:
    median: np.ndarray   # (label_nc, 3) per class and channel
    scale: np.ndarray    # (label_nc, 3) 1.4826 * MAD, at least COLOR_SCALE_FLOOR
    pixels: np.ndarray   # (label_nc,) judged pixels the model was fitted on
    images: np.ndarray   # (label_nc,) images it was fitted on
    valid: np.ndarray    # (label_nc,) bool: fitted on at least MIN_MODEL_IMAGES images

    def to_json(self, names):
        return {names[c] if c < len(names) else str(c): {
            "median": self.median[c].round(2).tolist(), "scale": self.scale[c].round(2).tolist(),
            "pixels": int(self.pixels[c]), "images": int(self.images[c])}
            for c in range(len(self.valid)) if self.valid[c]}


def _hist_median(hist):
    cdf = np.cumsum(hist)
    return int(np.searchsorted(cdf, cdf[-1] / 2.0))


def fit_color_models(channels, classes, label_nc):
    """Robust colour models of each class from colour samples of the whole dataset.

    channels: (N, P, 3) uint8 from `color_channels`; classes: (N, P) uint8 class of each sample
    (IGNORE = not judged). Returns a ColorModel: per class and channel, the median and the MAD
    (computed exactly from 256-bin histograms).
    """
    n = len(classes)
    cls = classes.reshape(n, -1).astype(np.int64)
    ch = channels.reshape(n, -1, 3).astype(np.int64)
    judged = cls != IGNORE
    c = cls[judged]
    hist = np.stack([np.bincount(c * 256 + ch[..., k][judged], minlength=label_nc * 256).reshape(label_nc, 256)
                     for k in range(3)], axis=1)  # (nc, 3, 256)
    pixels = hist[:, 0].sum(axis=1)
    rows = np.broadcast_to(np.arange(n)[:, None], cls.shape)[judged]
    seen = np.bincount(rows * label_nc + c, minlength=n * label_nc).reshape(n, label_nc)
    images = (seen > 0).sum(axis=0)
    median = np.zeros((label_nc, 3), np.float32)
    mad = np.zeros((label_nc, 3), np.float32)
    values = np.arange(256)
    for k in range(label_nc):
        if pixels[k] == 0:
            continue
        for j in range(3):
            m = _hist_median(hist[k, j])
            deviation = np.bincount(np.abs(values - m), weights=hist[k, j], minlength=256)
            median[k, j], mad[k, j] = m, _hist_median(deviation)
    scale = np.maximum(1.4826 * mad, COLOR_SCALE_FLOOR[None])
    return ColorModel(median, scale, pixels, images, images >= MIN_MODEL_IMAGES)


def color_outlier_fractions(model, channels, classes, labels, threshold, min_class_fraction, chunk=512):
    """For each image, (worst class, fraction of its judged pixels farther than `threshold` from
    the class model), over the classes covering >= min_class_fraction of the image; (-1, 0.0) when
    no class qualifies. channels/classes as for `fit_color_models`; labels: (N, P) all classes."""
    label_nc = len(model.valid)
    values = np.arange(256, dtype=np.float32)
    # (nc, 3, 256) squared weighted normalised deviation of every channel value
    table = ((values[None, None] - model.median[:, :, None]) / model.scale[:, :, None]
             * COLOR_WEIGHTS[None, :, None]) ** 2
    n = len(classes)
    out_class, out_fraction = np.full(n, -1, np.int64), np.zeros(n)
    for start in range(0, n, chunk):
        cls = classes[start:start + chunk].reshape(-1, classes[0].size).astype(np.int64)
        ch = channels[start:start + chunk].reshape(len(cls), -1, 3).astype(np.int64)
        lab = labels[start:start + chunk].reshape(len(cls), -1).astype(np.int64)
        m = len(cls)
        judged = (cls != IGNORE)
        judged &= model.valid[np.where(judged, cls, 0)]
        safe = np.where(judged, cls, 0)
        d2 = table[safe, 0, ch[..., 0]] + table[safe, 1, ch[..., 1]] + table[safe, 2, ch[..., 2]]
        outlier = judged & (d2 > threshold ** 2)
        row = np.arange(m)[:, None] * label_nc
        judged_n = np.bincount((row + safe)[judged], minlength=m * label_nc).reshape(m, label_nc)
        outlier_n = np.bincount((row + safe)[outlier], minlength=m * label_nc).reshape(m, label_nc)
        area = np.bincount((row + np.clip(lab, 0, label_nc - 1)).ravel(),
                           minlength=m * label_nc).reshape(m, label_nc) / lab.shape[1]
        eligible = (area >= min_class_fraction) & (judged_n >= MIN_CLASS_SAMPLES)
        fraction = np.where(eligible, outlier_n / np.maximum(judged_n, 1), -1.0)
        worst = fraction.argmax(axis=1)  # first class on ties: deterministic
        best = fraction[np.arange(m), worst]
        has = best >= 0
        out_class[start:start + m] = np.where(has, worst, -1)
        out_fraction[start:start + m] = np.where(has, best, 0.0)
    return out_class, out_fraction


# ---- near-duplicate label maps -------------------------------------------------------------------

def block_histograms(labels, label_nc, blocks=(4, 3)):
    """(N, H, W) label maps -> (N, blocks_y * blocks_x * label_nc) int32 class counts per block."""
    n, h, w = labels.shape
    by = np.minimum(np.arange(h) * blocks[1] // h, blocks[1] - 1)
    bx = np.minimum(np.arange(w) * blocks[0] // w, blocks[0] - 1)
    block = (by[:, None] * blocks[0] + bx[None, :])  # (H, W)
    nb = blocks[0] * blocks[1]
    index = (np.arange(n)[:, None, None] * nb + block[None]) * label_nc + np.clip(labels, 0, label_nc - 1)
    return np.bincount(index.ravel(), minlength=n * nb * label_nc).reshape(n, nb * label_nc).astype(np.int32)


def pairs_within_l1(points, budget):
    """All pairs (i < j) of rows with L1 distance <= budget, as an (M, 2) int array. Exact: two
    such rows are also within `budget` on any single coordinate, so sorting on the coordinate with
    the largest spread and sweeping a window of that width yields every candidate. (scipy's
    cKDTree.query_pairs did this too, but crashed the process after Jittor had run in it.)"""
    points = np.asarray(points, np.float64)
    n = len(points)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    axis = int(np.argmax(points.var(axis=0)))
    order = np.argsort(points[:, axis], kind="stable")
    keys = points[order, axis]
    ends = np.searchsorted(keys, keys + budget, side="right")
    found = []
    for a in range(n):
        window = order[a + 1:ends[a]]
        if len(window) == 0:
            continue
        i = order[a]
        near = window[np.abs(points[window] - points[i]).sum(axis=1) <= budget]
        if len(near):
            found.append(np.stack([np.minimum(near, i), np.maximum(near, i)], axis=1))
    return np.concatenate(found).astype(np.int64) if found else np.zeros((0, 2), np.int64)


def find_near_duplicate_groups(labels, similarity=0.95, label_nc=29, chunk=4096, progress=False):
    """Groups of label maps with pixel agreement >= `similarity` to the group's centre (the first
    index of each group; see `groups_around_centres`), ordered by centre.

    labels: (N, H, W) uint8, all the same size. Not all N^2 pairs are compared: a pixel agreement
    a implies an L1 distance <= 2 (1 - a) * H * W between the class counts of any block of the two
    maps, so a sort-and-sweep on the whole-map class histograms and then 4x3 block histograms select the
    candidates without losing any similar pair; only those are compared pixel by pixel.
    Returns (groups, stats).
    """
    labels = np.asarray(labels)
    n = len(labels)
    stats = {"images": n, "candidate_pairs": 0, "block_filtered_pairs": 0, "similar_pairs": 0}
    if n < 2:
        return [], stats
    pixels = labels[0].size
    budget = 2.0 * (1.0 - similarity) * pixels + 1e-6  # in pixel counts
    blocks = block_histograms(labels, label_nc)
    whole = blocks.reshape(n, -1, label_nc).sum(axis=1).astype(np.float64)
    pairs = pairs_within_l1(whole, budget)
    if len(pairs):
        pairs = np.sort(pairs, axis=1)
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    stats["candidate_pairs"] = int(len(pairs))
    flat = labels.reshape(n, -1)
    similar = []
    bar = tqdm(total=len(pairs), desc="near-duplicates", unit="pair", disable=not progress, leave=False)
    for start in range(0, len(pairs), chunk):
        p = pairs[start:start + chunk]
        l1 = np.abs(blocks[p[:, 0]].astype(np.int64) - blocks[p[:, 1]]).sum(axis=1)
        p = p[l1 <= budget]
        stats["block_filtered_pairs"] += int(len(p))
        if len(p):
            agree = (flat[p[:, 0]] == flat[p[:, 1]]).mean(axis=1)
            similar.extend((int(i), int(j), float(a)) for (i, j), a in zip(p, agree) if a >= similarity)
        bar.update(min(chunk, len(pairs) - start))
    bar.close()
    stats["similar_pairs"] = len(similar)

    groups = groups_around_centres(n, [(i, j) for i, j, _ in similar])
    return groups, stats


def groups_around_centres(n, pairs):
    """Greedy star clustering of a similarity graph (Butina): the node with the most similar
    neighbours (ties: lowest index) becomes a centre and takes all its still unassigned neighbours;
    repeat. Every member is similar to its centre, so unlike connected components a slow drift
    (A~B, B~C, ... ) cannot chain hundreds of different label maps into one group.
    Returns groups of >= 2 members as [centre, other members ascending...], ordered by centre."""
    neighbours = [[] for _ in range(n)]
    for i, j in pairs:
        neighbours[i].append(j)
        neighbours[j].append(i)
    assigned = np.zeros(n, bool)
    groups = []
    for centre in sorted(range(n), key=lambda i: (-len(neighbours[i]), i)):
        if assigned[centre] or not neighbours[centre]:
            continue
        members = sorted(j for j in neighbours[centre] if not assigned[j])
        if not members:
            continue
        assigned[centre] = True
        assigned[members] = True
        groups.append([centre] + members)
    return sorted(groups, key=lambda g: g[0])


def most_typical(stats, candidates, k):
    """The k of `candidates` (indices into `stats`, rows of per-photo colour statistics) closest to
    the median statistics of all of `stats` rows given; ties keep the candidates' order.
    Returns (chosen indices, distances of all candidates)."""
    stats = np.asarray(stats, np.float64)
    centre = np.median(stats, axis=0)
    distance = {i: float(np.linalg.norm(stats[i] - centre)) for i in range(len(stats))}
    ranked = sorted(candidates, key=lambda i: (round(distance[i], 6), candidates.index(i)))
    return ranked[:k], distance


# ---- contact sheets ------------------------------------------------------------------------------

THUMB = (128, 96)
CAPTION = 26
GAP = 4


def thumbnail_pair(image_path, label_path, label_nc):
    """(photo | coloured label) as a uint8 array of 2*THUMB; unreadable parts are drawn gray."""
    tile = np.full((THUMB[1], 2 * THUMB[0], 3), 90, np.uint8)
    try:
        tile[:, :THUMB[0]] = resize_photo(decode_photo(Path(image_path).read_bytes(), THUMB), THUMB)
    except Exception:  # noqa: BLE001 - an unreadable photo is drawn as a gray square
        pass
    try:
        tile[:, THUMB[0]:] = colorize(resize_label(read_label(label_path), THUMB), label_nc)
    except Exception:  # noqa: BLE001
        pass
    return tile


def write_contact_sheets(out_dir, name, entries, label_nc, columns=4, rows=8, progress=False):
    """Write `out_dir/<name>_NN.jpg` sheets of (photo | label) tiles; entries: list of
    (image_path, label_path, caption lines). Returns the written paths."""
    font = ImageFont.load_default()
    per_sheet = columns * rows
    tile_w, tile_h = 2 * THUMB[0] + GAP, THUMB[1] + CAPTION + GAP
    paths = []
    pages = range(0, len(entries), per_sheet)
    for page, start in enumerate(tqdm(pages, desc=f"sheets {name}", disable=not progress, leave=False), 1):
        chunk = entries[start:start + per_sheet]
        nrows = (len(chunk) + columns - 1) // columns
        sheet = Image.new("RGB", (columns * tile_w + GAP, nrows * tile_h + GAP), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for i, (image_path, label_path, lines) in enumerate(chunk):
            r, c = divmod(i, columns)
            x, y = GAP + c * tile_w, GAP + r * tile_h
            sheet.paste(Image.fromarray(thumbnail_pair(image_path, label_path, label_nc)), (x, y))
            for j, line in enumerate(lines[:2]):
                draw.text((x + 2, y + THUMB[1] + 1 + 12 * j), line, fill=(0, 0, 0), font=font)
        path = Path(out_dir) / f"{name}_{page:02d}.jpg"
        with atomic_path(path) as tmp:
            sheet.save(tmp, format="JPEG", quality=88)
        paths.append(path)
    return paths


# ---- the whole run -------------------------------------------------------------------------------

OUTPUT_FILES = ("selection1.txt", "selection2.txt", "report.json", "scores.csv")


def prepare_out_dir(data_dir, out_dir, overwrite):
    """Refuse an out_dir inside data_dir, or a non-empty one unless overwrite (then remove only
    the files a previous curation wrote)."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    if out_dir == data_dir or data_dir in out_dir.parents:
        raise ValueError(f"--out {out_dir} is inside --data {data_dir}: the data folder is never written")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass --overwrite to replace a previous curation")
        for name in OUTPUT_FILES:
            (out_dir / name).unlink(missing_ok=True)
        if (out_dir / "sheets").is_dir():
            for path in (out_dir / "sheets").glob("*.jpg"):
                path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _round(value, digits=4):
    if value is None:
        return None
    return round(float(value), digits)


@dataclass
class Features:
    """What the reading pass keeps of each readable pair (row i = stems[i])."""
    stems: list
    scores: list            # per stem: dict of scalar scores (colorfulness, backlight_ratio, ...)
    photo_hashes: list      # (stem, digest)
    label_hashes: list
    color_stats: np.ndarray     # (N, 6) Lab mean and std of the photo (typicality of near-dups)
    channels: np.ndarray        # (N, h, w, 3) colour samples (`color_channels`) at half work size
    classes: np.ndarray         # (N, h, w) class of each colour sample, IGNORE = not judged
    color_labels: np.ndarray    # (N, h, w) class of each colour sample (all pixels)
    dup_labels: np.ndarray      # (N, H, W) labels at dup_size for the near-duplicate search


def load_segmenter(path):
    """A `scripts/train_segmenter.py` checkpoint (CheckpointError, a ValueError, when unusable)."""
    from jspade.checkpoint import CheckpointError
    from jspade.models.segmenter import Segmenter  # the network code: only when a segmenter is used
    if not Path(path).is_file():
        raise CheckpointError(f"no segmenter checkpoint at {path}")
    return Segmenter.load(path)


def segmenter_agreements(segmenter, photos, labels, label_nc):
    """Pixel agreement of the segmenter's prediction on each photo (HxWx3 uint8) with its label."""
    from jspade.metrics.scores import confusion_matrix, pixel_accuracy
    batch = np.stack(photos).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    predictions = segmenter.predict(batch, at_train_size=False)
    return [pixel_accuracy(confusion_matrix(pred, lab, label_nc)) for pred, lab in zip(predictions, labels)]


def read_features(samples, opt, label_nc, segmenter=None, batch_size=16):
    """One pass over the pairs: file hashes, downsized copies and per-image scores -> Features."""
    n = len(samples)
    work, dup_size = tuple(opt.work_size), tuple(opt.dup_size)
    cw, ch_ = work[0] // 2, work[1] // 2
    seg_size = tuple(segmenter.size) if segmenter is not None and segmenter.size else work
    decode_size = (max(work[0], seg_size[0]), max(work[1], seg_size[1]))
    f = Features([s.stem for s in samples], [dict() for _ in range(n)], [], [],
                 np.zeros((n, 6), np.float32), np.zeros((n, ch_, cw, 3), np.uint8),
                 np.zeros((n, ch_, cw), np.uint8), np.zeros((n, ch_, cw), np.uint8),
                 np.zeros((n, dup_size[1], dup_size[0]), np.uint8))
    pending = []  # (index, photo at seg size, label at seg size) waiting for a segmenter batch

    def flush():
        values = segmenter_agreements(segmenter, [p[1] for p in pending], [p[2] for p in pending], label_nc)
        for (index, _, _), value in zip(pending, values):
            f.scores[index]["segmenter_agreement"] = float(value)
        pending.clear()

    for index, sample in enumerate(tqdm(samples, desc="reading", unit="pair", disable=not opt.progress)):
        photo_bytes = sample.image_path.read_bytes()
        f.photo_hashes.append((sample.stem, file_hash(photo_bytes)))
        f.label_hashes.append((sample.stem, file_hash(sample.label_path.read_bytes())))
        photo = decode_photo(photo_bytes, decode_size)
        label = read_label(sample.label_path)
        rgb, small = resize_photo(photo, work), resize_label(label, work)
        f.scores[index].update(
            colorfulness=colorfulness(rgb), backlight_ratio=backlight_score(rgb, small, SKY, opt.min_sky_fraction),
            clipped_fraction=clipped_fraction(rgb), contrast=contrast(rgb))
        f.color_stats[index] = color_stats(rgb)
        channels, bright = color_channels(rgb)
        judged = interior_mask(small) & bright
        f.channels[index] = channels[1::2, 1::2]
        f.color_labels[index] = small[1::2, 1::2]
        f.classes[index] = np.where(judged[1::2, 1::2], small[1::2, 1::2], IGNORE)
        f.dup_labels[index] = resize_label(small, dup_size)
        if segmenter is not None:
            pending.append((index, resize_photo(photo, seg_size), resize_label(label, seg_size)))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return f


def flag_duplicates(features, reasons):
    for which, hashes in (("duplicate_photo", features.photo_hashes), ("duplicate_label", features.label_hashes)):
        for stem, first in find_byte_duplicates(hashes).items():
            reasons[stem][which] = {"duplicate_of": first}


def flag_photo_checks(features, reasons, opt):
    """grayscale, backlit, clipped_highlights, low_contrast, segmenter_disagreement."""
    for stem, s in zip(features.stems, features.scores):
        r = reasons[stem]
        if s["colorfulness"] < opt.gray_threshold:
            r["grayscale"] = {"colorfulness": _round(s["colorfulness"])}
        if s["backlight_ratio"] is not None and s["backlight_ratio"] < opt.backlight_ratio:
            r["backlit"] = {"backlight_ratio": _round(s["backlight_ratio"])}
        if s["clipped_fraction"] >= opt.clipped_fraction:
            r["clipped_highlights"] = {"clipped_fraction": _round(s["clipped_fraction"])}
        if s["contrast"] < opt.min_contrast:
            r["low_contrast"] = {"contrast": _round(s["contrast"])}
        if s.get("segmenter_agreement", 1.0) < opt.segmenter_agreement:
            r["segmenter_disagreement"] = {"segmenter_agreement": _round(s["segmenter_agreement"])}


def flag_color_mismatches(features, reasons, opt, label_nc, names):
    """Fit the class colour models on photos that are neither duplicates nor grayscale, then flag
    color_mismatch (a grayscale photo is not judged: it has no colours). Returns the model."""
    fit_rows = np.array([i for i, stem in enumerate(features.stems)
                         if not ({"duplicate_photo", "duplicate_label", "grayscale"} & set(reasons[stem]))], np.int64)
    model = fit_color_models(features.channels[fit_rows], features.classes[fit_rows], label_nc)
    worst, fraction = color_outlier_fractions(model, features.channels, features.classes, features.color_labels,
                                              opt.color_distance, opt.color_min_class_fraction)
    for i, (stem, s) in enumerate(zip(features.stems, features.scores)):
        s["color_outlier_fraction"] = float(fraction[i])
        s["color_worst_class"] = names[worst[i]] if worst[i] >= 0 else ""
        if "grayscale" not in reasons[stem] and fraction[i] >= opt.color_outlier_fraction:
            reasons[stem]["color_mismatch"] = {"class": s["color_worst_class"], "outlier_fraction": _round(fraction[i])}
    return model


def flag_near_duplicates(features, reasons, opt, label_nc):
    """Group near-identical label maps (byte duplicates are already out); in each group keep the
    `near_dup_keep` most typical photos among those still in Selection II, flag the others.
    Returns (groups for the report, search statistics)."""
    rows = [i for i, stem in enumerate(features.stems)
            if not ({"duplicate_photo", "duplicate_label"} & set(reasons[stem]))]
    found, stats = find_near_duplicate_groups(features.dup_labels[rows], opt.near_dup_similarity, label_nc,
                                              progress=opt.progress)
    groups = []
    for gid, members in enumerate(found):
        idx = [rows[i] for i in members]
        stems = [features.stems[i] for i in idx]
        eligible = [k for k, stem in enumerate(stems) if not reasons[stem]]
        kept, distance = most_typical(features.color_stats[idx], eligible, opt.near_dup_keep)
        for k, i in enumerate(idx):
            features.scores[i].update(near_dup_group=gid, typicality_distance=distance[k])
            if k in eligible and k not in kept:
                reasons[stems[k]]["near_duplicate"] = {"group": gid, "typicality_distance": _round(distance[k])}
        groups.append({"id": gid, "centre": stems[0], "members": sorted(stems, key=natural_key),
                       "kept": sorted((stems[k] for k in kept), key=natural_key),
                       "typicality_distance": {stems[k]: _round(distance[k]) for k in range(len(stems))}})
    return groups, stats


def write_selections(out_dir, data_dir, all_stems, samples, reasons):
    """selection1.txt / selection2.txt; returns (Selection I stems, Selection II stems)."""
    order = list(REASONS)
    s1 = [s for s in all_stems if s in samples and not any(REASONS[r][0] for r in reasons[s])]
    s2 = [s for s in s1 if not reasons[s]]
    for name, title, stems, excluded in (
            ("selection1.txt", "Selection I", s1, [x for x in order if REASONS[x][0]]),
            ("selection2.txt", "Selection II", s2, order)):
        text = (f"# {title}: {len(stems)} of {len(all_stems)} stems, written by scripts/clean_dataset.py "
                f"from {Path(data_dir).resolve()}\n# excluded: {', '.join(excluded)}\n")
        write_bytes_atomic(out_dir / name, (text + "".join(f"{s}\n" for s in stems)).encode())
    return s1, s2


def rejected_entries(all_stems, reasons, score_of):
    order = list(REASONS)
    rejected = {}
    for stem in all_stems:
        r = reasons[stem]
        if not r:
            continue
        keys = sorted(r, key=order.index)
        entry = {"reasons": keys,
                 "excluded_from": ["selection1", "selection2"] if any(REASONS[x][0] for x in r) else ["selection2"],
                 "details": {k: r[k] for k in keys}}
        if stem in score_of:
            entry["scores"] = {k: (_round(v) if isinstance(v, float) else v) for k, v in score_of[stem].items()}
        rejected[stem] = entry
    return rejected


def write_all_sheets(out_dir, data_dir, all_stems, samples, reasons, groups, label_nc, opt):
    """One series of contact sheets per reason, the most certain cases first; near-duplicates are
    shown group by group with every member (kept or not)."""
    paths = []
    for reason in REASONS:
        if reason == "near_duplicate":
            entries = [(samples[m].image_path, samples[m].label_path,
                        [m, f"group {g['id']}: {_member_role(g, m, reasons[m])}, "
                            f"distance {g['typicality_distance'][m]:.2f}"])
                       for g in groups if any("near_duplicate" in reasons[m] for m in g["members"])
                       for m in g["members"]]
        else:
            hits = sorted((s for s in all_stems if reason in reasons[s]),
                          key=lambda s: _severity(reason, reasons[s][reason]))  # stable: ties by stem
            entries = [(_path(samples, data_dir, s, "imgs", ".jpg"), _path(samples, data_dir, s, "labels", ".png"),
                        [s, _caption(reason, reasons[s][reason])]) for s in hits]
        if entries:
            paths += write_contact_sheets(out_dir / "sheets", reason, entries, label_nc, opt.sheet_columns,
                                          opt.sheet_rows, opt.progress)
    return paths


def curate(data_dir, out_dir, options: Optional[CurationOptions] = None):
    """Curate the landscape dataset at `data_dir` into `out_dir` (see the module docstring).
    Returns the report (the dict written to report.json)."""
    opt = options or CurationOptions()
    data_dir = Path(data_dir)
    if not (0 <= opt.near_dup_similarity <= 1) or opt.near_dup_keep < 1:
        raise ValueError("near_dup_similarity must be in [0, 1] and near_dup_keep >= 1")
    segmenter = load_segmenter(opt.segmenter) if opt.segmenter else None  # fail before writing anything
    out_dir = prepare_out_dir(data_dir, out_dir, opt.overwrite)
    timing, start, last = {}, time.perf_counter(), [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        timing[name], last[0] = now - last[0], now

    dataset, bad, general = check_integrity(data_dir, opt.progress)
    label_nc = dataset.label_nc
    names = LANDSCAPE_NAMES if label_nc == len(LANDSCAPE_NAMES) else tuple(str(i) for i in range(label_nc))
    samples = {s.stem: s for s in dataset.samples}
    all_stems = sorted(set(samples) | set(bad), key=natural_key)
    reasons = {stem: {} for stem in all_stems}  # stem -> {reason: details}
    for stem, found in bad.items():
        for reason, message in found:
            reasons[stem].setdefault(reason, {"messages": []})["messages"].append(message)
    if segmenter is not None and segmenter.label_nc != label_nc:
        raise ValueError(f"segmenter {opt.segmenter} predicts {segmenter.label_nc} classes, the data has {label_nc}")
    lap("integrity")

    features = read_features([samples[s] for s in all_stems if s in samples and not reasons[s]],
                             opt, label_nc, segmenter)
    lap("reading")
    flag_duplicates(features, reasons)
    flag_photo_checks(features, reasons, opt)
    model = flag_color_mismatches(features, reasons, opt, label_nc, names)
    lap("checks")
    groups, dup_stats = flag_near_duplicates(features, reasons, opt, label_nc)
    lap("near_duplicates")

    s1, s2 = write_selections(out_dir, data_dir, all_stems, samples, reasons)
    score_of = dict(zip(features.stems, features.scores))
    write_scores_csv(out_dir / "scores.csv", list(score_of.items()))
    rejected = rejected_entries(all_stems, reasons, score_of)
    sheets = write_all_sheets(out_dir, data_dir, all_stems, samples, reasons, groups, label_nc, opt)
    lap("output")
    total = time.perf_counter() - start

    report = {
        "format": FORMAT,
        "data": str(data_dir.resolve()),
        "thresholds": opt.thresholds(),
        "reasons": {x: {"excludes_selection1": REASONS[x][0], "meaning": REASONS[x][1]} for x in REASONS},
        "counts": {"stems": len(all_stems), "pairs": len(samples), "read": len(features.stems),
                   "selection1": len(s1), "selection2": len(s2), "rejected": len(rejected),
                   "per_reason": {x: sum(x in e["reasons"] for e in rejected.values()) for x in REASONS}},
        "dataset_problems": general,
        "near_duplicates": {**dup_stats, "groups": groups},
        "color_models": {"channels": list(COLOR_CHANNELS), "weights": COLOR_WEIGHTS.tolist(),
                         "classes": model.to_json(names)},
        "sheets": [p.relative_to(out_dir).as_posix() for p in sheets],
        "rejected": rejected,
        "timing": {**{k: round(v, 3) for k, v in timing.items()}, "total": round(total, 3),
                   "pairs_per_second": round(len(all_stems) / total, 2) if total > 0 else None,
                   "work_size": list(opt.work_size)},
    }
    write_bytes_atomic(out_dir / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    return report


def _path(samples, data_dir, stem, folder, suffix):
    if stem in samples:
        return samples[stem].image_path if folder == "imgs" else samples[stem].label_path
    return Path(data_dir) / folder / f"{stem}{suffix}"  # may not exist: drawn gray


def _member_role(group, stem, reasons):
    if stem in group["kept"]:
        return "kept"
    return "dropped" if "near_duplicate" in reasons else "out (other reason)"


def _severity(reason, details):
    """Sort key of a rejected stem on its reason's sheet: the most certain cases first."""
    key = {"grayscale": ("colorfulness", 1), "backlit": ("backlight_ratio", 1),
           "clipped_highlights": ("clipped_fraction", -1), "low_contrast": ("contrast", 1),
           "color_mismatch": ("outlier_fraction", -1),
           "segmenter_disagreement": ("segmenter_agreement", 1)}.get(reason)
    return key[1] * details[key[0]] if key else 0.0


def _caption(reason, details):
    if "messages" in details:
        return details["messages"][0][:42]
    if "duplicate_of" in details:
        return f"= {details['duplicate_of']}"
    return ", ".join(f"{v}" if isinstance(v, str) else f"{k.replace('_', ' ')} {v:.3f}" for k, v in details.items())


def write_scores_csv(path, rows):
    columns = ["stem", "colorfulness", "backlight_ratio", "clipped_fraction", "contrast",
               "color_outlier_fraction", "color_worst_class", "segmenter_agreement", "near_dup_group",
               "typicality_distance"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for stem, s in rows:
        writer.writerow([stem] + ["" if s.get(c) is None else (f"{s[c]:.4f}" if isinstance(s[c], float) else s[c])
                                  for c in columns[1:]])
    write_bytes_atomic(path, buffer.getvalue().encode())
