"""Check the Jittor CLIP against a `clip_reference` archive (../shared/fixtures/clip_reference/FORMAT.md)
and the weight files beside it (`<archive stem>_*.pt`, `<archive stem>_*.safetensors`).

Rows: tokens (count of differing ids, must be 0), CLIP preprocessing of each raw image (<= 1e-5),
image and text features and logits (<= 1e-4 * max(1, max|expected|)), and for each weight file the
largest difference between its arrays and `init.*` rounded to the file's stored dtype (must be 0,
with the same keys). The model is built from the archive's config_json alone.
"""
import json
from pathlib import Path

import numpy as np

from jspade.parity import Comparison
from jspade.clip.model import CLIPConfig
from jspade.clip.preprocess import preprocess
from jspade.clip.tokenizer import tokenize
from jspade.clip.weights import build_clip, read_clip_state

_CONFIG_KEYS = {"embed_dim", "vision_patch_size", "transformer_width", "context_length"}


def is_clip_archive(path):
    """True when `path` is an .npz in the clip_reference format (its config_json has CLIP's arguments)."""
    try:
        with np.load(path) as npz:
            return "config_json" in npz.files and _CONFIG_KEYS <= set(json.loads(str(npz["config_json"])))
    except (OSError, ValueError):
        return False


def _activation(name, ours, expected):
    ours, expected = np.asarray(ours, np.float64), np.asarray(expected, np.float64)
    error = float(np.abs(ours - expected).max()) if ours.shape == expected.shape else float("inf")
    return Comparison(name, error, 1e-4 * max(1.0, float(np.abs(expected).max())))


def weight_file_comparisons(path, init):
    """One row per file: max |file - init rounded to the file's dtype| over every key (inf when the
    keys differ); tolerance 0."""
    state = read_clip_state(path)
    if set(state) != set(init):
        return [Comparison(f"{path.name}: same keys as init.*", float("inf"), 0.0)]
    error = 0.0
    for key, stored in state.items():
        expected = np.asarray(init[key]).astype(stored.dtype)
        if stored.shape != expected.shape:
            return [Comparison(f"{path.name}: {key} shape", float("inf"), 0.0)]
        error = max(error, float(np.abs(stored.astype(np.float64) - expected.astype(np.float64)).max(initial=0)))
    dtypes = sorted({str(v.dtype) for v in state.values()})
    return [Comparison(f"{path.name}: {len(state)} arrays == init.* as {'/'.join(dtypes)}", error, 0.0)]


def run_clip_parity(path):
    """[Comparison] for one clip_reference archive and the weight files beside it."""
    from jspade.runtime import jt
    path = Path(path)
    npz = np.load(path)
    config = CLIPConfig.from_dict(json.loads(str(npz["config_json"])))
    init = {k[len("init."):]: npz[k] for k in npz.files if k.startswith("init.")}
    results = []
    if "input.prompts" in npz.files:
        ours = tokenize([str(p) for p in npz["input.prompts"]], config.context_length)
        expected = npz["input.tokens"]
        mismatches = float(np.sum(ours != expected)) if ours.shape == expected.shape else float("inf")
        results.append(Comparison(f"tokens ({len(expected)} prompts, differing ids)", mismatches, 0.0))
    model = build_clip(init, config, source=f"{path} init.*")
    with jt.no_grad():
        image_features = model.encode_image(npz["input.images"]).numpy()
        text_features = model.encode_text(npz["input.tokens"]).numpy()
        logits = model(npz["input.images"], npz["input.tokens"])[0].numpy()
        results += [_activation("image_features", image_features, npz["expected.image_features"]),
                    _activation("text_features", text_features, npz["expected.text_features"]),
                    _activation("logits_per_image", logits, npz["expected.logits_per_image"])]
        i = 0
        while f"input.raw_image{i}" in npz.files:
            pre = preprocess(npz[f"input.raw_image{i}"], config.image_resolution)[None]
            expected = npz[f"expected.preprocessed{i}"]
            error = float(np.abs(pre - expected).max()) if pre.shape == expected.shape else float("inf")
            results.append(Comparison(f"preprocessed{i} (raw {npz[f'input.raw_image{i}'].shape})", error, 1e-5))
            if f"expected.raw_image_features{i}" in npz.files:
                results.append(_activation(f"raw_image_features{i} (from our preprocessing)",
                                           model.encode_image(pre).numpy(), npz[f"expected.raw_image_features{i}"]))
            i += 1
    for weights in sorted(path.parent.glob(f"{path.stem}_*.pt")) + sorted(path.parent.glob(f"{path.stem}_*.safetensors")):
        results += weight_file_comparisons(weights, init)
    return results


class ClipParityRun:
    """scripts/check_parity.py's checker for a clip_reference archive: opening it checks the archive
    (ArchiveError naming the file and what is missing); run() gives the rows (no noise runs: nothing
    here is a gradient)."""

    def __init__(self, path):
        from jspade.parity import ArchiveError
        self.path = Path(path)
        try:
            with np.load(self.path) as npz:
                names = set(npz.files)
                config = json.loads(str(npz["config_json"]))
        except (OSError, ValueError, KeyError) as e:
            raise ArchiveError(self.path, f"not a readable CLIP reference archive ({e})") from None
        required = {"input.images", "input.tokens", "expected.image_features", "expected.text_features",
                    "expected.logits_per_image"}
        missing = sorted(required - names) + sorted(set(CLIPConfig.__dataclass_fields__) - set(config))
        if not any(n.startswith("init.") for n in names):
            missing.append("init.*")
        if missing:
            raise ArchiveError(self.path, f"missing {', '.join(missing)} (clip_reference/FORMAT.md)")

    def run(self, noise_runs=0):
        return run_clip_parity(self.path)
