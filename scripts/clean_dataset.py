"""Curate the landscape training data into Selection I / Selection II subset files, with a report
and contact sheets of everything removed (see docs/curation.md and jspade/curation/).

    python scripts/clean_dataset.py --data datasets/landscape/train --out curation/
    python scripts/clean_dataset.py --data datasets/landscape/train --out curation/ \\
        --segmenter checkpoints/segmenter_landscape.pkl --near-dup-keep 3 --overwrite

Writes selection1.txt, selection2.txt, report.json, scores.csv and sheets/<reason>_NN.jpg into --out;
nothing in --data is ever written. A non-empty --out is refused unless --overwrite is given.
Exit status: 0 on success, 1 for a data error (a file named in one line), 2 on a usage error or a
refused --out.
"""
import sys
from pathlib import Path

from jspade import cli
from jspade.config import size_argument
from jspade.curation import CurationOptions, curate

# CurationOptions fields that are plain numeric thresholds, each a --flag of the same name.
THRESHOLD_HELP = {
    "gray_threshold": "grayscale when mean |R-G|+|G-B| (0..510) is below",
    "color_distance": "colour outlier beyond this robust distance from the class model",
    "color_outlier_fraction": "color_mismatch when this fraction of a class's pixels are outliers",
    "color_min_class_fraction": "only judge classes covering this fraction of the image",
    "segmenter_agreement": "segmenter_disagreement when pixel agreement is below",
    "backlight_ratio": "backlit when median luma non-sky / sky is below",
    "min_sky_fraction": "backlight is judged only when the sky covers this fraction",
    "clipped_fraction": "clipped_highlights when this fraction of pixels has a channel >= 250",
    "min_contrast": "low_contrast when the luma standard deviation is below",
    "near_dup_similarity": "label maps with this pixel agreement are near-duplicates",
    "near_dup_keep": "near-duplicates kept per group in Selection II",
}


def build_parser():
    d = CurationOptions()
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, type=cli.existing_path("folder"), help="dataset root (imgs/ + labels/)")
    ap.add_argument("--out", required=True, type=cli.output_folder,
                    help="output folder (must be empty, or --overwrite)")
    ap.add_argument("--segmenter", type=cli.existing_path("file"),
                    help="segmenter checkpoint (scripts/train_segmenter.py) for the agreement check")
    ap.add_argument("--overwrite", action="store_true", help="replace a previous curation in --out")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = ap.add_argument_group("thresholds")
    for name, help_text in THRESHOLD_HELP.items():
        default = getattr(d, name)
        g.add_argument("--" + name.replace("_", "-"), default=default,
                       type=cli.int_at_least(0) if isinstance(default, int) else cli.float_within(0),
                       help=help_text + " (default %(default)s)")
    g.add_argument("--work-size", type=size_argument(8, 4096), default=d.work_size,
                   help="size of the downsized copies the statistics use (default 128x96)")
    return ap


def main(argv=None):
    args = build_parser().parse_args(argv)
    options = CurationOptions(
        work_size=tuple(args.work_size), segmenter=args.segmenter, overwrite=args.overwrite,
        progress=not args.no_progress, **{name: getattr(args, name) for name in THRESHOLD_HELP})
    existed = args.out.exists()
    try:
        report = curate(args.data, args.out, options)
    except FileExistsError as error:  # a non-empty --out without --overwrite: a usage error
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        return 2
    except BaseException:
        if not existed and args.out.is_dir() and not any(args.out.iterdir()):
            args.out.rmdir()  # leave no empty --out behind
        raise  # reported by cli.run: a data error is one line and exit status 1
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
    sys.exit(cli.run(main))
