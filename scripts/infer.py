"""Render a submission: one <stem>.jpg per test label map.

  python scripts/infer.py --labels test/labels --checkpoint results/myrun --out submission
  python scripts/infer.py ... --label-to-img label_to_img.json --style-root train/imgs   # 2023 track
  python scripts/infer.py ... --checkpoint checkpoints/landscape   # the original's latest_net_G.pth

Every label is read and checked first; if any is unreadable or holds an id the model does not know,
nothing is written and each bad file is listed. Outputs are deterministic for a --seed.
"""
import argparse
import sys
from pathlib import Path

from jspade.checkpoint import CheckpointError
from jspade.config import parse_model_option, size_argument
from jspade.data.readers import DataError
from jspade.inference import render_folder


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", required=True, type=Path, help="folder of label maps (<stem>.png, 8- or 16-bit)")
    ap.add_argument("--checkpoint", required=True,
                    help="a jspade run folder (uses checkpoints/latest.pkl), a jspade .pkl checkpoint, or an "
                         "original SPADE checkpoint folder / latest_net_G.pth")
    ap.add_argument("--out", required=True, type=Path, help="output folder (must be empty unless --overwrite)")
    ap.add_argument("--size", type=size_argument(), default=(512, 384),
                    help="output WIDTHxHEIGHT, resized from the model's size with bicubic (default 512x384)")
    ap.add_argument("--batch-size", type=int, default=4, help="labels rendered at once")
    ap.add_argument("--seed", type=int, default=0, help="noise seed; the same seed gives the same images")
    ap.add_argument("--samples", type=int, default=1,
                    help="variations per label: 1 writes <stem>.jpg, K>1 writes <stem>_0.jpg .. <stem>_{K-1}.jpg")
    style = ap.add_mutually_exclusive_group()
    style.add_argument("--style-dir", type=Path, help="reference photos named like the labels (<stem>.jpg)")
    style.add_argument("--label-to-img", type=Path, help="JSON map label file -> reference image (2023 track)")
    ap.add_argument("--style-root", type=Path, help="folder the --label-to-img image names are relative to")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ap.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    ap.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                    help="set a model option for an original PyTorch checkpoint without opt.txt (e.g. ngf=64)")
    args = ap.parse_args(argv)

    overrides = {}
    for item in args.model_option:
        key, _, value = item.partition("=")
        try:
            overrides[key] = parse_model_option(key, value)
        except ValueError as error:
            ap.error(str(error))
    try:
        count = render_folder(args.labels, args.checkpoint, args.out, size=args.size, batch_size=args.batch_size,
                              seed=args.seed, samples=args.samples, style_dir=args.style_dir,
                              label_to_img=args.label_to_img, style_root=args.style_root, quality=args.quality,
                              overwrite=args.overwrite, model_overrides=overrides, progress=not args.no_progress)
    except FileExistsError as error:
        ap.error(str(error))
    except (DataError, CheckpointError) as error:
        print(f"refusing to render: {error}", file=sys.stderr)
        return 1
    print(f"wrote {count} image(s) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
