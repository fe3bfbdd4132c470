"""CLIP embeddings of every training image, cached for CLIP-conditioned training.

    python scripts/clip_features.py --data datasets/landscape/train --clip-weights ViT-B-32.pt

Writes `<data>/clip_features.npz` (or --out): each image's CLIP image features as CLIP gives them
(float32, not L2-normalised), keyed by file stem, with each image file's sha256 and the weights file's
sha256 (jspade/clip/features.py describes the format). Written atomically. A rerun encodes only what
is missing or stale (a changed image file; other weights make every row stale) and drops the stems no
longer in the data. `--clip-weights random` uses a small random-weight CLIP (demos and tests only,
says so loudly). An existing --out that is not a CLIP feature cache is not overwritten without --overwrite.
"""
import sys

from jspade import cli


def main(argv=None):
    from jspade.clip.weights import clip_weights_arg
    from jspade.data.datasets import DATASETS
    ap = cli.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=cli.existing_path("folder"), required=True, metavar="DIR",
                    help="the training data (contest layout DIR/imgs/*.jpg, or --dataset's layout)")
    ap.add_argument("--dataset", choices=sorted(set(DATASETS) - {"folder"}), default="landscape",
                    help="the data's layout (default: %(default)s)")
    ap.add_argument("--clip-weights", type=clip_weights_arg, required=True, metavar="PATH",
                    help="CLIP weights: OpenAI's ViT-B-32.pt, a .safetensors or a state dict (OpenAI or "
                         "Hugging Face names); 'random[:SEED]': a random-weight CLIP for demos only")
    ap.add_argument("--out", type=cli.output_file, metavar="FILE", help="the cache (default: DIR/clip_features.npz)")
    ap.add_argument("--batch-size", type=cli.int_at_least(1, 4096), default=32, metavar="N",
                    help="images per CLIP forward (default: %(default)s)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing --out that is not a feature cache")
    args = ap.parse_args(argv)

    from jspade.clip.cache_update import update_feature_cache
    out, _, _ = update_feature_cache(args.data, args.clip_weights, dataset=args.dataset, out=args.out,
                                     batch_size=args.batch_size, overwrite=args.overwrite)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
