"""The rejection reasons and the thresholds they are judged by: one table drives the flags, the
report, the order of the contact sheets and the columns of scores.csv."""
from dataclasses import asdict, dataclass
from typing import Optional


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


@dataclass(frozen=True)
class Reason:
    """Why a stem is rejected. A reason judged on a score names the score (a scores.csv column), the
    CurationOptions field it is compared with, and the direction: 'below' flags score < threshold,
    'at_least' flags score >= threshold."""
    name: str
    excludes_selection1: bool  # (every reason excludes from Selection II)
    meaning: str
    score: Optional[str] = None
    threshold: Optional[str] = None
    direction: Optional[str] = None

    def flags(self, value, options):
        """Whether a stem with this score is rejected for this reason (never for a missing score)."""
        if value is None:
            return False
        limit = getattr(options, self.threshold)
        return value < limit if self.direction == "below" else value >= limit

    def severity(self, details):
        """Sort key of a rejected stem on this reason's sheet: the most certain cases first."""
        if self.score is None:
            return 0.0
        return details[self.score] if self.direction == "below" else -details[self.score]


# In report order. The integrity reasons are the kinds of jspade.data.readers.Problem (PROBLEM_KINDS).
REASONS = (
    Reason("unreadable", True, "photo or label cannot be decoded, or a colour-coded label"),
    Reason("missing_pair", True, "photo without label or label without photo"),
    Reason("size_mismatch", True, "photo and label differ in size"),
    Reason("bad_class_id", True, "label holds class ids outside 0..label_nc-1"),
    Reason("duplicate_stem", True, "two files of one kind for one stem (e.g. a.png and a.bmp)"),
    Reason("integrity", True, "other problem reported by jspade.data.validate"),
    Reason("duplicate_photo", True, "photo byte-identical to an earlier stem's photo"),
    Reason("duplicate_label", True, "label byte-identical to an earlier stem's label"),
    Reason("grayscale", True, "photo channels nearly equal", "colorfulness", "gray_threshold", "below"),
    Reason("color_mismatch", True, "most pixels of a class are far from that class's colour model",
           "color_outlier_fraction", "color_outlier_fraction", "at_least"),
    Reason("segmenter_disagreement", True, "segmenter prediction on the photo disagrees with the label",
           "segmenter_agreement", "segmenter_agreement", "below"),
    Reason("backlit", False, "foreground much darker than the sky", "backlight_ratio", "backlight_ratio", "below"),
    Reason("clipped_highlights", False, "large fraction of blown-out pixels",
           "clipped_fraction", "clipped_fraction", "at_least"),
    Reason("low_contrast", False, "very low luminance contrast", "contrast", "min_contrast", "below"),
    Reason("near_duplicate", False, "one of a group of near-identical label maps beyond the kept K",
           "typicality_distance"),
)
REASON = {reason.name: reason for reason in REASONS}

# scores.csv: every score a reason is judged on, plus what explains them
SCORE_COLUMNS = tuple(dict.fromkeys(
    [r.score for r in REASONS if r.score] + ["color_worst_class", "near_dup_group"]))
