"""Curate the landscape training data into Selection I / Selection II subset files, with a report
and contact sheets of everything removed (see docs/curation.md and jspade/data/curation.py).

    python scripts/clean_dataset.py --data datasets/landscape/train --out curation/
    python scripts/clean_dataset.py --data datasets/landscape/train --out curation/ \\
        --segmenter checkpoints/segmenter_landscape.pkl --near-dup-keep 3 --overwrite

Writes selection1.txt, selection2.txt, report.json, scores.csv and sheets/<reason>_NN.jpg into --out;
nothing in --data is ever written. A non-empty --out is refused unless --overwrite is given.
Exit status: 0 on success, 2 on a usage error or a refused --out.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jspade.config import size_argument  # noqa: E402

import jspade  # noqa: E402,F401  (configures Jittor first)
from jspade.data.curation import CurationOptions, curate  # noqa: E402
from jspade.data.io import DataError  # noqa: E402




def build_parser():
    d = CurationOptions()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="dataset root (imgs/ + labels/)")
    ap.add_argument("--out", required=True, type=Path, help="output folder (must be empty, or --overwrite)")
    ap.add_argument("--segmenter", help="segmenter checkpoint (scripts/train_segmenter.py) for the agreement check")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous curation in --out")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = ap.add_argument_group("thresholds")
    g.add_argument("--gray-threshold", type=float, default=d.gray_threshold,
                   help="grayscale when mean |R-G|+|G-B| (0..510) is below (default %(default)s)")
    g.add_argument("--color-distance", type=float, default=d.color_distance,
                   help="colour outlier beyond this robust distance from the class model (default %(default)s)")
    g.add_argument("--color-outlier-fraction", type=float, default=d.color_outlier_fraction,
                   help="color_mismatch when this fraction of a class's pixels are outliers (default %(default)s)")
    g.add_argument("--color-min-class-fraction", type=float, default=d.color_min_class_fraction,
                   help="only judge classes covering this fraction of the image (default %(default)s)")
    g.add_argument("--segmenter-agreement", type=float, default=d.segmenter_agreement,
                   help="segmenter_disagreement when pixel agreement is below (default %(default)s)")
    g.add_argument("--backlight-ratio", type=float, default=d.backlight_ratio,
                   help="backlit when median luma non-sky / sky is below (default %(default)s)")
    g.add_argument("--min-sky-fraction", type=float, default=d.min_sky_fraction,
                   help="backlight is judged only when the sky covers this fraction (default %(default)s)")
    g.add_argument("--clipped-fraction", type=float, default=d.clipped_fraction,
                   help="clipped_highlights when this fraction of pixels has a channel >= 250 (default %(default)s)")
    g.add_argument("--min-contrast", type=float, default=d.min_contrast,
                   help="low_contrast when the luma standard deviation is below (default %(default)s)")
    g.add_argument("--near-dup-similarity", type=float, default=d.near_dup_similarity,
                   help="label maps with this pixel agreement are near-duplicates (default %(default)s)")
    g.add_argument("--near-dup-keep", type=int, default=d.near_dup_keep,
                   help="near-duplicates kept per group in Selection II (default %(default)s)")
    g.add_argument("--work-size", type=size_argument(8), default=d.work_size,
                   help="size of the downsized copies the statistics use (default 128x96)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = CurationOptions(
        work_size=tuple(args.work_size), gray_threshold=args.gray_threshold, color_distance=args.color_distance,
        color_outlier_fraction=args.color_outlier_fraction, color_min_class_fraction=args.color_min_class_fraction,
        segmenter=args.segmenter, segmenter_agreement=args.segmenter_agreement,
        backlight_ratio=args.backlight_ratio, min_sky_fraction=args.min_sky_fraction,
        clipped_fraction=args.clipped_fraction, min_contrast=args.min_contrast,
        near_dup_similarity=args.near_dup_similarity, near_dup_keep=args.near_dup_keep,
        overwrite=args.overwrite, progress=not args.no_progress)
    try:
        report = curate(args.data, args.out, options)
    except (FileExistsError, ValueError, DataError) as error:  # DataError is a ValueError too
        print(f"error: {error}", file=sys.stderr)
        return 2
    counts = report["counts"]
    print(f"{counts['stems']} stems: Selection I {counts['selection1']}, Selection II {counts['selection2']} "
          f"({report['timing']['total']:.1f}s, {report['timing']['pairs_per_second']:.1f} pairs/s)")
    for reason, count in counts["per_reason"].items():
        if count:
            print(f"  {reason:24s} {count}")
    print(f"wrote {args.out}/selection1.txt, selection2.txt, report.json, scores.csv, "
          f"{len(report['sheets'])} contact sheet(s) in sheets/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
