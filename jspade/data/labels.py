"""Class tables and label-map colouring for display.

`LANDSCAPE_CLASSES` is the one table of the Jittor landscape contest's 29 classes: id, name and the
RGB colour used to draw a label map. Other datasets (COCO-Stuff, ADE20K, ...) get a deterministic
generated palette from `make_palette(label_nc)`. Ids outside [0, label_nc) -- the dontcare id
`label_nc`, raw 255 -- are drawn black, which no class colour is.
"""
import colorsys
from typing import NamedTuple

import numpy as np


class LabelClass(NamedTuple):
    id: int
    name: str
    color: tuple  # (R, G, B) display colour


LANDSCAPE_CLASSES = (
    LabelClass(0, "mountain", (118, 104, 130)),
    LabelClass(1, "sky", (135, 200, 245)),
    LabelClass(2, "water", (40, 110, 200)),
    LabelClass(3, "sea", (15, 60, 150)),
    LabelClass(4, "rock", (128, 128, 118)),
    LabelClass(5, "tree", (25, 95, 35)),
    LabelClass(6, "earth", (140, 96, 56)),
    LabelClass(7, "hill", (134, 162, 88)),
    LabelClass(8, "river", (80, 150, 230)),
    LabelClass(9, "sand", (232, 212, 150)),
    LabelClass(10, "land", (176, 146, 104)),
    LabelClass(11, "building", (186, 84, 64)),
    LabelClass(12, "grass", (112, 196, 68)),
    LabelClass(13, "plant", (56, 150, 96)),
    LabelClass(14, "person", (245, 120, 185)),
    LabelClass(15, "boat", (250, 165, 40)),
    LabelClass(16, "waterfall", (195, 235, 250)),
    LabelClass(17, "wall", (166, 152, 140)),
    LabelClass(18, "pier", (110, 72, 36)),
    LabelClass(19, "path", (204, 184, 164)),
    LabelClass(20, "lake", (55, 160, 180)),
    LabelClass(21, "bridge", (150, 60, 125)),
    LabelClass(22, "field", (222, 202, 78)),
    LabelClass(23, "road", (80, 80, 84)),
    LabelClass(24, "railing", (205, 205, 60)),
    LabelClass(25, "fence", (172, 122, 60)),
    LabelClass(26, "ship", (250, 90, 30)),
    LabelClass(27, "house", (222, 56, 56)),
    LabelClass(28, "other", (205, 0, 205)),
)
LANDSCAPE_LABEL_NC = len(LANDSCAPE_CLASSES)
LANDSCAPE_NAMES = tuple(c.name for c in LANDSCAPE_CLASSES)
LANDSCAPE_IDS = {c.name: c.id for c in LANDSCAPE_CLASSES}
LANDSCAPE_PALETTE = np.array([c.color for c in LANDSCAPE_CLASSES], dtype=np.uint8)


def label_id_problem(raw, invalid, accepted):
    """The one check of a label map's ids, with the one wording: None when the mask `invalid` (the
    pixels of `raw` a model cannot take) is empty, else
    'class id(s) [41, 300] out of range (<accepted>) in 7 pixel(s)'. `accepted` says in words what
    is allowed (e.g. 'ids 0..28')."""
    if not invalid.any():
        return None
    bad = np.unique(raw[invalid])
    shown = str(bad[:10].tolist())[:-1] + (", ...]" if bad.size > 10 else "]")
    return f"class id(s) {shown} out of range ({accepted}) in {int(invalid.sum())} pixel(s)"


def make_palette(label_nc: int) -> np.ndarray:
    """A deterministic (label_nc, 3) uint8 palette of distinct, never-dark colours.

    Hues step by the golden ratio so neighbouring ids differ strongly; saturation and value cycle
    on co-prime periods so that ids whose hues come close still differ in the other two.
    """
    colors = []
    for i in range(label_nc):
        hue = (i * 0.6180339887) % 1.0
        saturation = 0.45 + 0.55 * ((i * 3) % 5) / 4
        value = 0.55 + 0.45 * ((i * 2) % 7) / 6
        colors.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, saturation, value)])
    return np.array(colors, dtype=np.uint8).reshape(label_nc, 3)


def palette_for(label_nc: int) -> np.ndarray:
    """The landscape table for 29 classes, a generated palette otherwise."""
    return LANDSCAPE_PALETTE if label_nc == LANDSCAPE_LABEL_NC else make_palette(label_nc)


def colorize(label, label_nc: int = LANDSCAPE_LABEL_NC) -> np.ndarray:
    """Colour a class-id map (HxW, or 1xHxW) as an HxWx3 uint8 RGB image; out-of-range ids are black."""
    label = np.asarray(label)
    if label.ndim == 3 and label.shape[0] == 1:
        label = label[0]
    if label.ndim != 2:
        raise ValueError(f"colorize expects an HxW label map, got shape {label.shape}")
    # One extra black row that every invalid id is routed to.
    table = np.concatenate([palette_for(label_nc), np.zeros((1, 3), np.uint8)])
    ids = label.astype(np.int64)
    ids = np.where((ids >= 0) & (ids < label_nc), ids, label_nc)
    return table[ids]
