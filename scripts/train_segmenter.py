"""Train the segmentation network behind mask accuracy on (real photo -> label map) pairs.

    python scripts/train_segmenter.py --data datasets/synthetic/train --val datasets/synthetic/val \\
        --size 128x96 --epochs 8 --out checkpoints/segmenter.pkl
    python scripts/train_segmenter.py --data data/landscape/train --val data/landscape/val \\
        --size 256x192 --width 32 --epochs 40 --out checkpoints/segmenter_landscape.pkl

Every sample is resized (photo bicubic, label nearest) to --size, and training photos are flipped
horizontally at random. The loss is pixel-wise cross-entropy; pixels labelled with the dontcare id
(= label_nc, e.g. COCO-Stuff's raw 255) are ignored. After each epoch, when --val is given, the pixel
accuracy and mIoU of the network on the REAL validation photos are printed: that is the ceiling
mask accuracy a generator can reach with this segmenter. The checkpoint is written atomically after
every epoch (so an interrupted run keeps the last finished epoch) and an existing checkpoint file
is never replaced unless --overwrite is given.

Use it for mask accuracy:  python scripts/evaluate.py --fake results/ --labels LABEL_DIR --segmenter CKPT
"""
import sys
from pathlib import Path

from jspade import cli
from jspade.config import size_argument
from jspade.data.datasets import DATASETS
from jspade.train.segmenter import TrainError, train


def build_parser():
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=cli.existing_path("folder"), required=True, metavar="DIR",
                    help="training data root, in the layout of --dataset (landscape: imgs/ + labels/)")
    ap.add_argument("--dataset", choices=sorted(DATASETS), default="landscape",
                    help="on-disk layout, as jspade.data.datasets.build_dataset (default: %(default)s)")
    ap.add_argument("--label-nc", type=cli.int_at_least(1), metavar="N",
                    help="number of classes (default: the dataset's own, e.g. 29 for landscape; "
                         "required for --dataset folder)")
    ap.add_argument("--label-dir", default="labels",
                    help="--dataset folder only: label folder, relative to --data/--val (default: %(default)s)")
    ap.add_argument("--image-dir", default="imgs",
                    help="--dataset folder only: photo folder, relative to --data/--val (default: %(default)s)")
    ap.add_argument("--size", type=size_argument(8, 4096), default=(256, 192), metavar="WxH",
                    help="training resolution WIDTHxHEIGHT; prediction resizes any input to it and back "
                         "(default: 256x192)")
    ap.add_argument("--epochs", type=cli.int_at_least(1), default=10,
                    help="passes over the training data (default: %(default)s)")
    ap.add_argument("--batch-size", type=cli.int_at_least(1), default=8, help="pairs per step (default: %(default)s)")
    ap.add_argument("--lr", type=cli.float_within(0, low_open=True), default=1e-2,
                    help="peak Adam learning rate; short warm-up, then cosine decay (default: %(default)s)")
    ap.add_argument("--width", type=cli.int_at_least(1), default=16,
                    help="channels of the first stage (doubling per stage, x4 at 1/8): the model size knob "
                         "(default: %(default)s)")
    ap.add_argument("--val", type=cli.existing_path("folder"), metavar="DIR",
                    help="validation data (same layout; the landscape layout may be a folder with imgs/ + "
                         "labels/): pixel accuracy and mIoU on its REAL photos after every epoch (the "
                         "mask-accuracy ceiling)")
    ap.add_argument("--out", type=cli.output_file, default=Path("checkpoints/segmenter.pkl"), metavar="CKPT",
                    help="checkpoint file to write (default: %(default)s)")
    ap.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    ap.add_argument("--seed", type=cli.int_at_least(0), default=0,
                    help="random seed of initialisation, shuffling and flips (default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return ap


def main(argv=None):
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        ap.error(f"{args.out} exists; pass --overwrite to replace it")
    try:
        train(args.data, args.dataset, args.label_nc, args.size, args.epochs, args.batch_size, args.lr,
              args.width, args.val, args.out, args.overwrite, args.seed, not args.no_progress,
              label_dir=args.label_dir, image_dir=args.image_dir)
    except (TrainError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
