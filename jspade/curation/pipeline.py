"""The curation run: integrity, one reading pass, the checks, near-duplicates, then the outputs."""
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from jspade.atomic import write_bytes_atomic
from jspade.curation.checks import (SKY, backlight_score, check_integrity, clipped_fraction, color_channels,
                                         color_stats, colorfulness, contrast, decode_photo, file_hash,
                                         find_byte_duplicates, interior_mask, resize_label, resize_photo)
from jspade.curation.color_model import (COLOR_CHANNELS, COLOR_WEIGHTS, IGNORE, color_outlier_fractions,
                                              fit_color_models)
from jspade.curation.near_duplicates import find_near_duplicate_groups, most_typical
from jspade.curation.reasons import REASON, REASONS, CurationOptions
from jspade.curation.report import (rejected_entries, rounded, write_all_sheets, write_scores_csv,
                                         write_selections)
from jspade.data.labels import LANDSCAPE_NAMES
from jspade.data.readers import natural_key, read_label
from jspade.errors import ConfigError
from jspade.safe_load import CheckpointError
from jspade.metrics.scores import confusion_matrix, load_segmenter, pixel_accuracy

FORMAT = "jspade-curation-1"
# reasons judged on a per-photo score as soon as it is read (before the colour models are fitted,
# which leave grayscale photos out)
PHOTO_REASONS = ("grayscale", "segmenter_disagreement", "backlit", "clipped_highlights", "low_contrast")


OUTPUT_FILES = ("selection1.txt", "selection2.txt", "report.json", "scores.csv")


def prepare_out_dir(data_dir, out_dir, overwrite):
    """Refuse an out_dir inside data_dir, or a non-empty one unless overwrite (then remove only
    the files a previous curation wrote)."""
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    if out_dir == data_dir or data_dir in out_dir.parents:
        raise ConfigError(f"--out {out_dir} is inside --data {data_dir}: the data folder is never written")
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


def segmenter_agreements(segmenter, photos, labels, label_nc):
    """Pixel agreement of the segmenter's prediction on each photo (HxWx3 uint8) with its label."""
    batch = np.stack(photos).transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0
    predictions = segmenter.predict(batch, at_train_size=False)
    return [pixel_accuracy(confusion_matrix(pred, lab, label_nc)) for pred, lab in zip(predictions, labels)]


def read_features(samples, options, label_nc, segmenter=None, batch_size=16):
    """One pass over the pairs: file hashes, downsized copies and per-image scores -> Features."""
    n = len(samples)
    work, dup_size = tuple(options.work_size), tuple(options.dup_size)
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

    for index, sample in enumerate(tqdm(samples, desc="reading", unit="pair", disable=not options.progress)):
        photo_bytes = sample.image_path.read_bytes()
        f.photo_hashes.append((sample.stem, file_hash(photo_bytes)))
        f.label_hashes.append((sample.stem, file_hash(sample.label_path.read_bytes())))
        photo = decode_photo(photo_bytes, decode_size)
        label = read_label(sample.label_path)
        rgb, small = resize_photo(photo, work), resize_label(label, work)
        f.scores[index].update(
            colorfulness=colorfulness(rgb), backlight_ratio=backlight_score(rgb, small, SKY, options.min_sky_fraction),
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


def flag_photo_checks(features, reasons, options):
    """The PHOTO_REASONS, each by its score, threshold and direction in the table of reasons."""
    for stem, scores in zip(features.stems, features.scores):
        for name in PHOTO_REASONS:
            reason = REASON[name]
            if reason.flags(scores.get(reason.score), options):
                reasons[stem][name] = {reason.score: rounded(scores[reason.score])}


def flag_color_mismatches(features, reasons, options, label_nc, names):
    """Fit the class colour models on photos that are neither duplicates nor grayscale, then flag
    color_mismatch (a grayscale photo is not judged: it has no colours). Returns the model."""
    fit_rows = np.array([i for i, stem in enumerate(features.stems)
                         if not ({"duplicate_photo", "duplicate_label", "grayscale"} & set(reasons[stem]))], np.int64)
    model = fit_color_models(features.channels[fit_rows], features.classes[fit_rows], label_nc)
    worst, fraction = color_outlier_fractions(model, features.channels, features.classes, features.color_labels,
                                              options.color_distance, options.color_min_class_fraction)
    for i, (stem, s) in enumerate(zip(features.stems, features.scores)):
        s["color_outlier_fraction"] = float(fraction[i])
        s["color_worst_class"] = names[worst[i]] if worst[i] >= 0 else ""
        if "grayscale" not in reasons[stem] and REASON["color_mismatch"].flags(fraction[i], options):
            reasons[stem]["color_mismatch"] = {"class": s["color_worst_class"],
                                               "color_outlier_fraction": rounded(fraction[i])}
    return model


def flag_near_duplicates(features, reasons, options, label_nc):
    """Group near-identical label maps (byte duplicates are already out); in each group keep the
    `near_dup_keep` most typical photos among those still in Selection II, flag the others.
    Returns (groups for the report, search statistics)."""
    rows = [i for i, stem in enumerate(features.stems)
            if not ({"duplicate_photo", "duplicate_label"} & set(reasons[stem]))]
    found, stats = find_near_duplicate_groups(features.dup_labels[rows], options.near_dup_similarity, label_nc,
                                              progress=options.progress)
    groups = []
    for gid, members in enumerate(found):
        idx = [rows[i] for i in members]
        stems = [features.stems[i] for i in idx]
        eligible = [k for k, stem in enumerate(stems) if not reasons[stem]]
        kept, distance = most_typical(features.color_stats[idx], eligible, options.near_dup_keep)
        for k, i in enumerate(idx):
            features.scores[i].update(near_dup_group=gid, typicality_distance=distance[k])
            if k in eligible and k not in kept:
                reasons[stems[k]]["near_duplicate"] = {"group": gid, "typicality_distance": rounded(distance[k])}
        groups.append({"id": gid, "centre": stems[0], "members": sorted(stems, key=natural_key),
                       "kept": sorted((stems[k] for k in kept), key=natural_key),
                       "typicality_distance": {stems[k]: rounded(distance[k]) for k in range(len(stems))}})
    return groups, stats


def curate(data_dir, out_dir, options: Optional[CurationOptions] = None):
    """Curate the landscape dataset at `data_dir` into `out_dir` (see the module docstring).
    Returns the report (the dict written to report.json)."""
    options = options or CurationOptions()
    data_dir = Path(data_dir)
    if not (0 <= options.near_dup_similarity <= 1) or options.near_dup_keep < 1:
        raise ConfigError("near_dup_similarity must be in [0, 1] and near_dup_keep >= 1")
    segmenter = load_segmenter(options.segmenter) if options.segmenter else None  # fail before writing anything
    out_dir = prepare_out_dir(data_dir, out_dir, options.overwrite)
    timing, start, last = {}, time.perf_counter(), [time.perf_counter()]

    def lap(name):
        now = time.perf_counter()
        timing[name], last[0] = now - last[0], now

    dataset, bad, general = check_integrity(data_dir, options.progress)
    label_nc = dataset.label_nc
    names = LANDSCAPE_NAMES if label_nc == len(LANDSCAPE_NAMES) else tuple(str(i) for i in range(label_nc))
    samples = {s.stem: s for s in dataset.samples}
    all_stems = sorted(set(samples) | set(bad), key=natural_key)
    reasons = {stem: {} for stem in all_stems}  # stem -> {reason: details}
    for stem, found in bad.items():
        for reason, message in found:
            reasons[stem].setdefault(reason, {"messages": []})["messages"].append(message)
    if segmenter is not None and segmenter.label_nc != label_nc:
        raise CheckpointError(f"segmenter {options.segmenter} predicts {segmenter.label_nc} classes, the data has "
                              f"{label_nc}")
    lap("integrity")

    features = read_features([samples[s] for s in all_stems if s in samples and not reasons[s]],
                             options, label_nc, segmenter)
    lap("reading")
    flag_duplicates(features, reasons)
    flag_photo_checks(features, reasons, options)
    model = flag_color_mismatches(features, reasons, options, label_nc, names)
    lap("checks")
    groups, dup_stats = flag_near_duplicates(features, reasons, options, label_nc)
    lap("near_duplicates")

    s1, s2 = write_selections(out_dir, data_dir, all_stems, samples, reasons)
    score_of = dict(zip(features.stems, features.scores))
    write_scores_csv(out_dir / "scores.csv", list(score_of.items()))
    rejected = rejected_entries(all_stems, reasons, score_of)
    sheets = write_all_sheets(out_dir, data_dir, all_stems, samples, reasons, groups, label_nc, options)
    lap("output")
    total = time.perf_counter() - start

    report = {
        "format": FORMAT,
        "data": str(data_dir.resolve()),
        "thresholds": options.thresholds(),
        "reasons": {r.name: {"excludes_selection1": r.excludes_selection1, "meaning": r.meaning,
                             **({"score": r.score} if r.score else {}),
                             **({"threshold": r.threshold, "flagged_when": r.direction} if r.threshold else {})}
                    for r in REASONS},
        "counts": {"stems": len(all_stems), "pairs": len(samples), "read": len(features.stems),
                   "selection1": len(s1), "selection2": len(s2), "rejected": len(rejected),
                   "per_reason": {x: sum(x in e["reasons"] for e in rejected.values()) for x in REASON}},
        "dataset_problems": general,
        "near_duplicates": {**dup_stats, "groups": groups},
        "color_models": {"channels": list(COLOR_CHANNELS), "weights": COLOR_WEIGHTS.tolist(),
                         "classes": model.to_json(names)},
        "sheets": [p.relative_to(out_dir).as_posix() for p in sheets],
        "rejected": rejected,
        "timing": {**{k: round(v, 3) for k, v in timing.items()}, "total": round(total, 3),
                   "pairs_per_second": round(len(all_stems) / total, 2) if total > 0 else None,
                   "work_size": list(options.work_size)},
    }
    write_bytes_atomic(out_dir / "report.json", (json.dumps(report, indent=1) + "\n").encode())
    return report
