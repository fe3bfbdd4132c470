"""CLIP embeddings of images and prompts, and the embedding cache of a training set.

The cache (`scripts/clip_features.py` writes it) is an .npz (no pickle) holding:
  format          "jspade-clip-features-1"
  stems           [N] str, the images' file stems
  features        [N, E] float32: CLIP's image features as `encode_image` gives them, NOT normalised
                  (normalise where they are used: `normalize`)
  image_sha256    [N] str, the sha256 of each image file when it was encoded (a changed file is stale)
  weights_sha256  str, the sha256 of the CLIP weights file (another weights file: every row is stale)
  weights, data   str, the --clip-weights and --data it was made with (for the rebuild command)
  embed_dim, image_resolution

`load_feature_cache` is what training calls; it imports no model code.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jspade.errors import JspadeError

FORMAT = "jspade-clip-features-1"
DEFAULT_NAME = "clip_features.npz"


class FeatureCacheError(JspadeError, ValueError):
    """A CLIP feature cache that cannot be used; the message names it and the command that rebuilds it."""


@dataclass
class FeatureCache:
    path: Path
    stems: list            # in the order asked for (all of the cache's when none were asked for)
    features: np.ndarray   # [len(stems), E] float32, as CLIP gives them (not normalised)
    weights_sha256: str
    weights: str           # the weights path it was made with
    data: str              # the data folder it was made with

    def __post_init__(self):
        self._row = {stem: i for i, stem in enumerate(self.stems)}

    def __getitem__(self, stem):
        """The feature vector of one stem (KeyError when the cache was loaded without it)."""
        return self.features[self._row[stem]]


def rebuild_command(data="DATA", weights="CLIP_WEIGHTS", out=None):
    command = f"python scripts/clip_features.py --data {data} --clip-weights {weights}"
    return command + (f" --out {out}" if out else "")


def read_cache_file(path):
    """The arrays of a cache file as a dict, or FeatureCacheError (one line naming the file)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise FeatureCacheError(f"{path}: not a readable CLIP feature cache ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                f"rebuild it: {rebuild_command(out=path)}") from None
    needed = {"format", "stems", "features", "image_sha256", "weights_sha256", "weights", "data"}
    if str(raw.get("format", "")) != FORMAT or not needed <= set(raw):
        raise FeatureCacheError(f"{path}: not a CLIP feature cache of this version ({FORMAT}); rebuild it: "
                                f"{rebuild_command(out=path)}")
    n = len(raw["stems"])
    if raw["features"].ndim != 2 or len(raw["features"]) != n or len(raw["image_sha256"]) != n:
        raise FeatureCacheError(f"{path}: damaged (stems, features and hashes differ in length); rebuild it: "
                                f"{rebuild_command(raw.get('data', 'DATA'), raw.get('weights', 'CLIP_WEIGHTS'), path)}")
    return raw


def load_feature_cache(path, stems=None, weights_sha256=None):
    """The cache at `path` for `stems` (all when None). Refuses (FeatureCacheError, one line naming the
    file and the command that rebuilds it) a missing file, a cache lacking any of `stems`, or one made
    with other weights than `weights_sha256` (when given)."""
    path = Path(path)
    if not path.is_file():
        raise FeatureCacheError(f"{path}: no CLIP feature cache; make it: {rebuild_command(out=path)}")
    raw = read_cache_file(path)
    data, weights = str(raw["data"]), str(raw["weights"])
    again = rebuild_command(data, weights if weights_sha256 is None else "CLIP_WEIGHTS", path)
    if weights_sha256 is not None and str(raw["weights_sha256"]) != weights_sha256:
        raise FeatureCacheError(f"{path}: stale: made with other CLIP weights (sha256 {str(raw['weights_sha256'])[:12]}..., "
                                f"wanted {weights_sha256[:12]}...); rebuild it: {again}")
    cached = [str(s) for s in raw["stems"]]
    index = {stem: i for i, stem in enumerate(cached)}
    wanted = cached if stems is None else [str(s) for s in stems]
    missing = [s for s in wanted if s not in index]
    if missing:
        raise FeatureCacheError(f"{path}: incomplete: lacks {len(missing)} of {len(wanted)} images "
                                f"({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); rebuild it: {again}")
    rows = np.array([index[s] for s in wanted], np.int64)
    return FeatureCache(path, wanted, raw["features"][rows].astype(np.float32), str(raw["weights_sha256"]),
                        weights, data)


def write_feature_cache(path, stems, features, image_sha256, weights_sha256, weights, data, image_resolution=0):
    """Write a cache atomically (see the module docstring for its fields)."""
    from jspade.atomic import atomic_path
    features = np.asarray(features, np.float32)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, format=np.array(FORMAT), stems=np.array([str(s) for s in stems], dtype=str),
                 features=features.reshape(len(stems), -1), image_sha256=np.array(list(image_sha256), dtype=str),
                 weights_sha256=np.array(weights_sha256), weights=np.array(str(weights)), data=np.array(str(data)),
                 embed_dim=np.array(features.shape[-1] if features.size else 0),
                 image_resolution=np.array(image_resolution))


# --- encoding ---------------------------------------------------------------------------------------------
def normalize(features):
    """Rows scaled to unit L2 norm (numpy)."""
    features = np.asarray(features, np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def encode_images(model, images, batch_size=32):
    """uint8 images (HxW, HxWx3 or HxWx4 arrays, or PIL images; any size) -> float32 [N, E] image
    features as CLIP gives them (not normalised), with CLIP's preprocessing."""
    from jspade.runtime import jt
    from jspade.clip.preprocess import preprocess_batch
    out = []
    with jt.no_grad():
        for start in range(0, len(images), batch_size):
            batch = preprocess_batch(images[start:start + batch_size], model.image_resolution)
            out.append(model.encode_image(batch).numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)


def encode_text(model, prompts, truncate=False):
    """Prompts (str or list of str) -> float32 [M, E] text features (not normalised). A prompt over
    the context length (77 tokens) raises ValueError unless truncate=True."""
    from jspade.runtime import jt
    from jspade.clip.tokenizer import tokenize
    tokens = tokenize(prompts, model.config.context_length, truncate)
    with jt.no_grad():
        return model.encode_text(tokens).numpy().astype(np.float32)
