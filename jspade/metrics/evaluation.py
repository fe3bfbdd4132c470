"""One evaluation of a folder of generated images: FID, style similarity, mask accuracy and the
contest scores (`scripts/evaluate.py` is its command line).

Each metric is computed when its inputs are given, otherwise reported as unavailable with the
reason: nothing is guessed, and a contest score needs every metric its formula uses.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from jspade.metrics import fid as fid_metrics
from jspade.metrics import scores

METRICS = ("fid", "style_similarity", "aesthetic", "mask_accuracy", "mask_miou", "score_2022", "score_2023")
# (score, its formula, the metrics it needs in the formula's argument order)
CONTEST_SCORES = (
    ("score_2022", scores.score_2022, ("mask_accuracy", "aesthetic", "fid")),
    ("score_2023", scores.score_2023, ("mask_accuracy", "aesthetic", "style_similarity", "fid")),
)


@dataclass
class EvaluationInputs:
    """What an evaluation may use; None = not given (the metrics that need it are unavailable)."""
    fake: Path
    real: Optional[Path] = None  # real images, or their statistics (.npz)
    real_cache: Optional[Path] = None
    references: Optional[Path] = None
    label_to_img: Optional[Path] = None
    style_root: Optional[Path] = None
    clip_reference: Optional[Path] = None  # infer.py --clip-reference: a folder, a label_to_img.json or one photo
    bins: int = scores.HISTOGRAM_BINS
    match_histogram: bool = False  # also style similarity after histogram matching (infer.py --match-histogram)
    aesthetic: Optional[float] = None
    mask_accuracy: Optional[float] = None
    labels: Optional[Path] = None
    segmenter: Optional[Path] = None
    num_classes: int = 29
    weights: Optional[Path] = None
    batch_size: int = 16
    progress: bool = True


class Unavailable(Exception):
    """A metric whose inputs were not given (or cannot be used); the message says why."""


def feature_extractor(inputs):
    return fid_metrics.InceptionFeatureExtractor(inputs.weights, batch_size=inputs.batch_size,
                                                 progress=inputs.progress)


def fid_value(inputs):
    if inputs.real is None:
        raise Unavailable("needs --real (real images or their statistics)")
    return fid_metrics.fid(inputs.fake, inputs.real, feature_extractor(inputs), real_cache=inputs.real_cache)


def style_pairs(inputs):
    """(output, reference) path pairs for style similarity."""
    if inputs.references is not None:
        return scores.style_pairs_by_name(inputs.fake, inputs.references)
    if inputs.label_to_img is not None and inputs.style_root is not None:
        return scores.style_pairs_from_mapping(inputs.fake, inputs.label_to_img, inputs.style_root)
    reference = inputs.clip_reference
    if reference is not None:
        if Path(reference).is_dir():
            return scores.style_pairs_by_name(inputs.fake, reference)
        if Path(reference).suffix.lower() == ".json":
            return scores.style_pairs_from_mapping(inputs.fake, reference, inputs.style_root or Path(reference).parent)
        return [(output, Path(reference)) for output in fid_metrics.list_images(inputs.fake)]  # one photo for all
    raise Unavailable("needs --references, --label-to-img with --style-root, or --clip-reference")


def style_similarity_value(inputs):
    return scores.mean_style_similarity(style_pairs(inputs), inputs.bins)


def matched_style_similarity_value(inputs):
    """Mean style similarity once each output is histogram-matched to its reference."""
    from jspade.data.readers import read_image
    from jspade.histogram_match import match_histograms

    values = []
    for output, reference in style_pairs(inputs):
        ref = read_image(reference)
        values.append(scores.style_similarity(match_histograms(read_image(output), ref), ref, inputs.bins))
    return sum(values) / len(values)


def aesthetic_value(inputs):
    if inputs.aesthetic is None:
        raise Unavailable("only from --aesthetic (a contest/human judgement, never estimated)")
    return inputs.aesthetic


def segmenter_mask_scores(inputs):
    """(mask accuracy, mIoU) of the segmenter's reading of the fakes against their labels."""
    if inputs.labels is None or inputs.segmenter is None:
        raise Unavailable("needs --labels with --segmenter (a segmentation network), or --mask-accuracy")
    try:
        segmenter = scores.load_segmenter(inputs.segmenter)
    except scores.SegmenterUnavailable as error:
        raise Unavailable(f"{error}; scores that need mask accuracy are unavailable") from None
    return scores.mask_accuracy(inputs.fake, inputs.labels, segmenter, inputs.num_classes, with_miou=True)


def contest_score(formula, needs, results):
    missing = [name for name in needs if results[name][0] is None]
    if missing:
        raise Unavailable("needs " + ", ".join(missing))
    return formula(*(results[name][0] for name in needs))


def _attempt(compute, *args):
    """(value, None), or (None, why it is unavailable)."""
    try:
        return compute(*args), None
    except Unavailable as reason:
        return None, str(reason)


def evaluate(inputs: EvaluationInputs):
    """({metric: value or None} for every name in METRICS, {metric: reason} for the unavailable ones)."""
    results = {"fid": _attempt(fid_value, inputs),
               "style_similarity": _attempt(style_similarity_value, inputs),
               "aesthetic": _attempt(aesthetic_value, inputs)}
    if inputs.mask_accuracy is not None:  # measured elsewhere: no mIoU comes with it
        results["mask_accuracy"] = (inputs.mask_accuracy, None)
        results["mask_miou"] = (None, "needs --labels with --segmenter (--mask-accuracy gives no mIoU)")
    else:
        both, reason = _attempt(segmenter_mask_scores, inputs)
        results["mask_accuracy"] = (None, reason) if reason else (both[0], None)
        results["mask_miou"] = (None, reason) if reason else (both[1], None)
    for name, formula, needs in CONTEST_SCORES:
        results[name] = _attempt(contest_score, formula, needs, results)
    names = list(METRICS)
    if inputs.match_histogram:
        results["style_similarity_matched"] = _attempt(matched_style_similarity_value, inputs)
        names.append("style_similarity_matched")
    values = {name: results[name][0] for name in names}
    reasons = {name: results[name][1] for name in names if results[name][1] is not None}
    return values, reasons
