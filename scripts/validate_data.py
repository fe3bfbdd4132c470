"""Check a dataset before training: print every problem found and exit 1 if there is any.

    python scripts/validate_data.py --data data/landscape/train
    python scripts/validate_data.py --data data/coco --dataset coco_stuff --phase val
    python scripts/validate_data.py --data my --dataset folder --label-dir labels --image-dir photos --label-nc 13

Reports missing pairs (by stem), unreadable or corrupt files, label/photo size mismatches and
class ids out of range (file and ids). See datasets/README.md for the layouts.
"""
import sys

from jspade import cli
from jspade.data.datasets import DATASETS
from jspade.data.validate import validate_dataset


def main(argv=None):
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, type=cli.existing_path("folder"), help="dataset root")
    ap.add_argument("--dataset", default="landscape", choices=sorted(DATASETS))
    ap.add_argument("--phase", default="train", help="train / val / test (selects the split of layouts that have them)")
    ap.add_argument("--label-nc", type=cli.int_at_least(1), help="number of classes (default: the dataset's)")
    ap.add_argument("--contain-dontcare-label", action="store_true", default=None,
                    help="raw id 255 is 'unlabeled' (default: the dataset's)")
    ap.add_argument("--no-instance", action="store_true", default=None, help="ignore instance maps")
    ap.add_argument("--subset", type=cli.existing_path("file"),
                    help="text file of stems to check (one per line, '#' comments)")
    ap.add_argument("--preprocess-mode", help="also check that the crop fits (default: the dataset's)")
    ap.add_argument("--load-size", type=cli.int_at_least(1))
    ap.add_argument("--crop-size", type=cli.int_at_least(1))
    ap.add_argument("--aspect-ratio", type=cli.float_within(0, low_open=True))
    ap.add_argument("--label-dir", default=".", help="folder dataset: label maps (relative to --data)")
    ap.add_argument("--image-dir", help="folder dataset: photos (relative to --data; omit for labels only)")
    ap.add_argument("--instance-dir", help="folder dataset: instance maps (relative to --data)")
    args = ap.parse_args(argv)

    opts = dict(phase=args.phase, label_nc=args.label_nc, contain_dontcare_label=args.contain_dontcare_label,
                no_instance=args.no_instance, subset=args.subset, preprocess_mode=args.preprocess_mode,
                load_size=args.load_size, crop_size=args.crop_size, aspect_ratio=args.aspect_ratio)
    if args.dataset == "folder":
        if args.label_nc is None:
            ap.error("--dataset folder needs --label-nc")
        opts.update(label_dir=args.label_dir, image_dir=args.image_dir, instance_dir=args.instance_dir)
    opts = {k: v for k, v in opts.items() if v is not None}

    problems = validate_dataset(args.dataset, args.data, progress=True, **opts)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{len(problems)} problem(s) in {args.data}", file=sys.stderr)
        return 1
    print(f"{args.data}: OK", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
