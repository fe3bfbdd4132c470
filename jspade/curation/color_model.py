"""Per-class colour models of the whole dataset, and how far each photo's classes stray from them
(the color_mismatch check: a label whose 'sky' is green disagrees with its photo).

Channels: r, g chromaticity x 255 and brightness, with a per-channel weight in the distance and
the smallest scale (so a class with a very narrow distribution does not flag every tint).
Brightness only contributes a little: exposure varies too much between photos (and a backlit photo
must not look like a label error), while chromaticity does not change with exposure.
"""
from dataclasses import dataclass

import numpy as np

IGNORE = 255  # class value of colour-sample pixels that are not judged (boundary, too dark)
COLOR_CHANNELS = ("r", "g", "brightness")
COLOR_WEIGHTS = np.array([1.0, 1.0, 0.25], np.float32)
COLOR_SCALE_FLOOR = np.array([4.0, 4.0, 24.0], np.float32)
MIN_MODEL_IMAGES = 10  # a class seen in fewer (clean) images has no colour model
MIN_CLASS_SAMPLES = 20  # judged pixels a class needs in an image to be scored there


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
