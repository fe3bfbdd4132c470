"""Jittor contest scores (landscape generation, 2022 and 2023) and the segmentation metrics behind
their mask accuracy.

Formulas, kept exactly as specified for this project (FID clamped at 100):

    fid_term   = (100 - min(FID, 100)) / 100
    score_2022 = mask_acc * (aesthetic / 10 * 0.5 + fid_term * 0.5)
    score_2023 = mask_acc * (aesthetic * 0.2 + (style_similarity * 0.5 + 0.5) * 0.3 + fid_term * 0.5)

The 2023 aesthetic term has no "/ 10" (unlike 2022): whatever scale the aesthetic score has, it is
used as given. The aesthetic score is the contest's human/learned judgement: it is never estimated
here. Style similarity (2023) is the correlation of the colour histograms of each output and its
reference (style) image: per RGB channel a histogram with `bins` equal-width bins over [0, 256)
(256 by default: one bin per value), compared like OpenCV's `compareHist(..., HISTCMP_CORREL)`,
averaged over the 3 channels and then over the images. The correlation does not change when a
histogram is scaled, so images of different sizes compare directly.
"""
import json
from pathlib import Path

import numpy as np
from PIL import Image

from jspade.data.readers import LABEL_EXTENSIONS, list_files
from jspade.errors import JspadeError
from jspade.metrics.fid import list_images, read_rgb

FID_CLAMP = 100.0
HISTOGRAM_BINS = 256


def fid_term(fid):
    """(100 - min(FID, 100)) / 100: 1 for a perfect FID, 0 from FID 100 on."""
    return (FID_CLAMP - min(float(fid), FID_CLAMP)) / FID_CLAMP


def score_2022(mask_accuracy, aesthetic, fid):
    return mask_accuracy * (aesthetic / 10 * 0.5 + fid_term(fid) * 0.5)


def score_2023(mask_accuracy, aesthetic, style_similarity, fid):
    return mask_accuracy * (aesthetic * 0.2 + (style_similarity * 0.5 + 0.5) * 0.3 + fid_term(fid) * 0.5)


# --- style similarity --------------------------------------------------------------------------

def color_histograms(image, bins=HISTOGRAM_BINS):
    """3 x bins counts of an H x W x 3 uint8 RGB image, bins of equal width over [0, 256)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image, got {image.dtype} {image.shape}")
    bin_of_value = (np.arange(256) * bins) // 256
    return np.stack([np.bincount(bin_of_value[image[..., c].ravel()], minlength=bins)
                     for c in range(3)]).astype(np.float64)


def histogram_correlation(h1, h2):
    """Pearson correlation of two histograms, as cv2.compareHist(h1, h2, HISTCMP_CORREL); like
    OpenCV it is 1 when either histogram is constant (the correlation is undefined there)."""
    d1 = np.asarray(h1, np.float64).ravel()
    d2 = np.asarray(h2, np.float64).ravel()
    d1, d2 = d1 - d1.mean(), d2 - d2.mean()
    denominator = (d1 @ d1) * (d2 @ d2)
    if denominator <= np.finfo(np.float64).eps:
        return 1.0
    return float(d1 @ d2 / np.sqrt(denominator))


def style_similarity(image, reference, bins=HISTOGRAM_BINS):
    """Mean over R, G, B of the histogram correlation of `image` and `reference` (uint8 RGB)."""
    ours, theirs = color_histograms(image, bins), color_histograms(reference, bins)
    return float(np.mean([histogram_correlation(ours[c], theirs[c]) for c in range(3)]))


def _images_by_stem(directory):
    return {path.stem: path for path in list_images(directory)}


def style_pairs_by_name(fake_dir, reference_dir):
    """[(output, reference)]: each output's reference is the image with the same stem."""
    references = _images_by_stem(reference_dir)
    outputs = _images_by_stem(fake_dir)
    missing = sorted(set(outputs) - set(references))
    if missing:
        raise FileNotFoundError(f"{len(missing)} outputs have no reference image in {reference_dir}, "
                                f"e.g. {missing[:3]}")
    return [(outputs[stem], references[stem]) for stem in sorted(outputs)]


def style_pairs_from_mapping(fake_dir, label_to_img_json, style_root):
    """[(output, reference)] from the 2023 contest's `label_to_img.json`, {label file name:
    reference image file name}; an output is matched to its label by stem (`x.jpg` <- `x.png`)."""
    mapping = json.loads(Path(label_to_img_json).read_text())
    reference_by_stem = {Path(label).stem: Path(style_root) / image for label, image in mapping.items()}
    pairs = []
    for stem, output in sorted(_images_by_stem(fake_dir).items()):
        if stem not in reference_by_stem:
            raise KeyError(f"{output.name}: no entry for label {stem!r} in {label_to_img_json}")
        reference = reference_by_stem[stem]
        if not reference.is_file():
            raise FileNotFoundError(f"reference image of {output.name} not found: {reference}")
        pairs.append((output, reference))
    return pairs


def mean_style_similarity(pairs, bins=HISTOGRAM_BINS):
    """Average `style_similarity` over (output path, reference path) pairs."""
    if not pairs:
        raise ValueError("no (output, reference) pairs to compare")
    return float(np.mean([style_similarity(read_rgb(a), read_rgb(b), bins) for a, b in pairs]))


# --- segmentation metrics (mask accuracy) ---------------------------------------------------------

def confusion_matrix(pred, label, num_classes):
    """num_classes x num_classes counts, rows = true label, columns = prediction. Pixels whose
    label is outside [0, num_classes) (e.g. 255 = unlabeled) are ignored."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    label = np.asarray(label).astype(np.int64).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"prediction and label differ in size: {pred.shape} vs {label.shape}")
    valid = (label >= 0) & (label < num_classes)
    if ((pred[valid] < 0) | (pred[valid] >= num_classes)).any():
        raise ValueError(f"predicted class ids outside [0, {num_classes})")
    counts = np.bincount(label[valid] * num_classes + pred[valid], minlength=num_classes ** 2)
    return counts.reshape(num_classes, num_classes)


def pixel_accuracy(confusion):
    """Fraction of (valid) pixels predicted correctly."""
    confusion = np.asarray(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def mean_iou(confusion):
    """Mean intersection-over-union over the classes that occur in the labels or predictions."""
    confusion = np.asarray(confusion, np.float64)
    intersection = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    present = union > 0
    return float((intersection[present] / union[present]).mean()) if present.any() else float("nan")


class SegmenterUnavailable(JspadeError, ValueError):
    """No segmentation network checkpoint at the given path (mask accuracy and the curation's
    agreement check need one)."""


def load_segmenter(checkpoint):
    """The segmentation network of a `scripts/train_segmenter.py` checkpoint, as a
    `jspade.models.segmenter.Segmenter`: callable on one H x W x 3 uint8 RGB image -> H x W class ids
    (and `.predict` on N x 3 x H x W batches in [-1, 1]). Raises SegmenterUnavailable when there is
    no such file, `jspade.checkpoint.CheckpointError` when the file is not a (matching) segmenter."""
    path = Path(checkpoint)
    if not path.is_file():
        raise SegmenterUnavailable(
            f"no segmentation network checkpoint at {checkpoint} (train one with scripts/train_segmenter.py)")
    from jspade.models.segmenter import Segmenter  # imports Jittor: only when a segmenter is used
    return Segmenter.load(path)


def mask_accuracy(fake_dir, label_dir, segmenter, num_classes=29, with_miou=False):
    """Pixel accuracy of `segmenter`'s predictions on the outputs against the input label maps
    (matched by stem), compared at the LABEL's resolution as the contest does: an output whose size
    differs from its label is first resized (bilinear) to the label's size, then segmented.
    `segmenter` is a callable H x W x 3 uint8 RGB -> H x W class ids (e.g. `load_segmenter(ckpt)`);
    a prediction of another size is resized (nearest) to the label's. Label pixels outside
    [0, num_classes) are ignored. With `with_miou`, returns (pixel accuracy, mIoU) from the same
    confusion matrix."""
    labels = {path.stem: path for path in list_files(label_dir, LABEL_EXTENSIONS)}
    confusion = np.zeros((num_classes, num_classes), np.int64)
    outputs = sorted(_images_by_stem(fake_dir).items())
    if not outputs:
        raise FileNotFoundError(f"no images in {fake_dir}")
    for stem, output in outputs:
        if stem not in labels:
            raise FileNotFoundError(f"no label map {stem}.png in {label_dir} for {output.name}")
        with Image.open(labels[stem]) as label_image:
            label = np.asarray(label_image)  # keeps 16-bit labels 16-bit
        size = (label.shape[1], label.shape[0])
        with Image.open(output) as image:
            image = image.convert("RGB")
            if image.size != size:
                image = image.resize(size, Image.BILINEAR)
            rgb = np.asarray(image)
        prediction = np.asarray(segmenter(rgb))
        if prediction.shape != label.shape:
            prediction = np.asarray(Image.fromarray(prediction.astype(np.int32)).resize(size, Image.NEAREST))
        confusion += confusion_matrix(prediction, label, num_classes)
    accuracy = pixel_accuracy(confusion)
    return (accuracy, mean_iou(confusion)) if with_miou else accuracy
