"""CLIP embeddings of every training image, cached for CLIP-conditioned training.

    python scripts/clip_features.py --data datasets/landscape/train --clip-weights ViT-B-32.pt

Writes `<data>/clip_features.npz` (or --out): each image's CLIP image features as CLIP gives them
(float32, not L2-normalised), keyed by file stem, with each image file's sha256 and the weights file's
sha256 (jspade/clip/features.py describes the format). Written atomically. A rerun encodes only what
is missing or stale (a changed image file; other weights make every row stale) and drops the stems no
longer in the data. `--clip-weights random` uses a small random-weight CLIP (demos and tests only,
says so loudly). An existing --out that is not a CLIP feature cache is not overwritten without --overwrite.
"""
import hashlib
import sys

from jspade import cli


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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

    import numpy as np
    from tqdm import tqdm
    from jspade.clip.features import DEFAULT_NAME, FORMAT, FeatureCacheError, encode_images, read_cache_file, \
        write_feature_cache
    from jspade.clip.weights import open_clip_weights
    from jspade.data.datasets import build_dataset
    from jspade.data.readers import read_image

    out = args.out or args.data / DEFAULT_NAME
    previous = None
    if out.exists():
        try:
            previous = read_cache_file(out)
        except FeatureCacheError:
            if not args.overwrite:
                raise FeatureCacheError(f"{out}: exists and is not a CLIP feature cache ({FORMAT}); "
                                        "not overwritten (--overwrite replaces it, or choose --out)") from None
    dataset = build_dataset(args.dataset, args.data, strict=False)
    samples = [s for s in dataset.samples if s.image_path is not None]
    if not samples:
        raise FeatureCacheError(f"{args.data}: no training images found (layout {args.dataset})")
    model, weights_sha256 = open_clip_weights(args.clip_weights)
    hashes = [file_sha256(s.image_path) for s in samples]
    rows = {}
    if previous is not None and str(previous["weights_sha256"]) == weights_sha256:
        for i, (stem, digest) in enumerate(zip(previous["stems"], previous["image_sha256"])):
            rows[(str(stem), str(digest))] = previous["features"][i]
    features = [rows.get((s.stem, h)) for s, h in zip(samples, hashes)]
    todo = [i for i, f in enumerate(features) if f is None]
    print(f"{len(samples)} images: {len(samples) - len(todo)} cached, {len(todo)} to encode", file=sys.stderr)
    with tqdm(total=len(todo), desc="CLIP features", unit="img", disable=not todo) as bar:
        for start in range(0, len(todo), args.batch_size):
            chunk = todo[start:start + args.batch_size]
            encoded = encode_images(model, [read_image(samples[i].image_path) for i in chunk], args.batch_size)
            for i, row in zip(chunk, encoded):
                features[i] = row
            bar.update(len(chunk))
    write_feature_cache(out, [s.stem for s in samples], np.stack(features), hashes, weights_sha256,
                        args.clip_weights, args.data, model.image_resolution)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
