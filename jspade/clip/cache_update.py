"""Making and updating a data folder's CLIP feature cache (the format: jspade/clip/features.py).

`update_feature_cache` is what `scripts/clip_features.py` runs: it encodes only the images that are
new or changed since the cache was written (every image when the weights differ) and drops the stems
no longer in the data. `prepare_training_cache` is what training calls before it reads the cache:
for the synthetic demo data it makes the cache itself with the small random-weight CLIP (real CLIP
weights are not obtainable offline), and it says loudly whenever the cache it is about to train on was
made with random weights.
"""
import sys
from pathlib import Path

import numpy as np

from jspade.clip.features import (DEFAULT_NAME, FORMAT, FeatureCacheError, encode_images, read_cache_file,
                                  rebuild_command, write_feature_cache)

DEMO_WEIGHTS = "random:0"  # what the synthetic demo's cache is made with


def update_feature_cache(data, weights, dataset="landscape", out=None, batch_size=32, overwrite=False,
                         progress=True, log=None):
    """Bring the cache `out` (default `<data>/clip_features.npz`) up to date with the images of `data`
    (in `dataset`'s layout) under the CLIP `weights` (a clip_weights_arg value: a path or
    'random:SEED'). Returns (out, images encoded now, images in the cache)."""
    from tqdm import tqdm
    from jspade.clip.weights import file_sha256, open_clip_weights
    from jspade.data.datasets import build_dataset
    from jspade.data.readers import read_image

    log = log or (lambda line: print(line, file=sys.stderr))
    data = Path(data)
    out = Path(out) if out is not None else data / DEFAULT_NAME
    previous = None
    if out.exists():
        try:
            previous = read_cache_file(out)
        except FeatureCacheError:
            if not overwrite:
                raise FeatureCacheError(f"{out}: exists and is not a CLIP feature cache ({FORMAT}); "
                                        "not overwritten (--overwrite replaces it, or choose --out)") from None
    samples = [s for s in build_dataset(dataset, data, strict=False).samples if s.image_path is not None]
    if not samples:
        raise FeatureCacheError(f"{data}: no training images found (layout {dataset})")
    model, weights_sha256 = open_clip_weights(weights)
    hashes = [file_sha256(s.image_path) for s in samples]
    rows = {}
    if previous is not None and str(previous["weights_sha256"]) == weights_sha256:
        for i, (stem, digest) in enumerate(zip(previous["stems"], previous["image_sha256"])):
            rows[(str(stem), str(digest))] = previous["features"][i]
    features = [rows.get((s.stem, h)) for s, h in zip(samples, hashes)]
    todo = [i for i, f in enumerate(features) if f is None]
    log(f"{len(samples)} images: {len(samples) - len(todo)} cached, {len(todo)} to encode")
    with tqdm(total=len(todo), desc="CLIP features", unit="img", disable=not (todo and progress),
              file=sys.stderr) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            encoded = encode_images(model, [read_image(samples[i].image_path) for i in chunk], batch_size)
            for i, row in zip(chunk, encoded):
                features[i] = row
            bar.update(len(chunk))
    write_feature_cache(out, [s.stem for s in samples], np.stack(features), hashes, weights_sha256,
                        weights, data, model.image_resolution)
    return out, len(todo), len(samples)


def made_with_random_weights(path):
    """Whether the cache at `path` (readable) was made with --clip-weights random[:SEED]."""
    return str(read_cache_file(path)["weights"]).startswith("random")


def prepare_training_cache(path, data_root, synthetic, stems, log=None):
    """Before training reads the cache at `path`: for synthetic data (`synthetic`), make it, or bring
    it up to date for `stems`, with the random-weight demo CLIP unless it already covers every stem
    or was made with real weights (those are left to the trainer's checks, which name the command
    that rebuilds them); then warn loudly when the cache was made with random weights."""
    log = log or (lambda line: print(line, file=sys.stderr))
    path = Path(path)
    if synthetic:
        previous = None
        if path.is_file():
            try:
                previous = read_cache_file(path)
            except FeatureCacheError:
                previous = None  # damaged: the demo's own cache is remade
        made_with = str(previous["weights"]) if previous is not None else DEMO_WEIGHTS
        complete = previous is not None and set(map(str, stems)) <= set(map(str, previous["stems"]))
        if made_with.startswith("random") and not complete:
            log(f"making the synthetic data's CLIP feature cache {path} with a random-weight CLIP ({made_with})")
            update_feature_cache(data_root, made_with, out=path, overwrite=True, log=log)
    if path.is_file() and made_with_random_weights(path):
        bar = "!" * 78
        log(f"\n{bar}\n!! WARNING: CLIP conditioning from a CLIP with RANDOM weights: the feature cache\n"
            f"!! {path} was made with --clip-weights random. Its embeddings carry only the\n"
            "!! images' colour and layout statistics. For real training, remake it with real weights:\n"
            f"!! {rebuild_command(data_root, 'ViT-B-32.pt', path)} (docs/clip.md)\n{bar}")
