"""CLIP conditioning while training a CLIP-modulated SPADE (model.clip_dim > 0; docs/clip_spade.md).

The training images' embeddings come from the feature cache beside the data (refused, with the
command that rebuilds it, when missing, incomplete or damaged); the style bank is built over them and
set on the model (netG.clip_mean). Invariant: the embeddings a batch gets depend only on its stems and
on (seed, iteration, rank), so a resumed run draws what the uninterrupted one drew.
"""
import numpy as np

from jspade.errors import ConfigError
from jspade.runtime import jt
from jspade.safe_load import CheckpointError
from jspade.style_bank import StyleBank, build_style_bank

NO_STYLE_P = 0.1  # how often an image's embedding is replaced by the bank mean ("no style")


class ClipConditioning:
    def __init__(self, data, model, seed, log=print):
        """`data`: the run's jspade.train.data.TrainingData; `model`: the SPADEModel that gets the bank."""
        from jspade.clip.cache_update import prepare_training_cache
        from jspade.clip.features import DEFAULT_NAME, load_feature_cache, normalize
        self.model, self.seed = model, seed
        self.cache_path = data.root / DEFAULT_NAME
        stems = sorted({sample.stem for sample in data.training("").samples})
        # the synthetic demo's cache is made here; loud when it was made with random weights
        prepare_training_cache(self.cache_path, data.root, data.cfg.data.dataset == "synthetic", stems, log)
        cache = load_feature_cache(self.cache_path, stems)
        clip_dim = data.cfg.model.clip_dim
        if cache.features.shape[1] != clip_dim:
            raise ConfigError(f"{cache.path}: holds {cache.features.shape[1]}-d CLIP embeddings but model.clip_dim is "
                              f"{clip_dim}: set --model.clip_dim {cache.features.shape[1]}")
        model.set_style_bank(build_style_bank(cache.features, cache.stems, cache.weights_sha256))
        log(f"CLIP conditioning: {len(stems)} embeddings from {cache.path}; style bank of {model.style_bank.k} centres")
        self.embeddings = dict(zip(cache.stems, normalize(cache.features)))

    def inputs(self, stems, iteration, rank=0, no_style_p=NO_STYLE_P):
        """The embeddings [N, D] of `stems`; each replaced by the bank mean with probability `no_style_p`."""
        mean = self.model.style_bank.mean
        rows = np.stack([self.embeddings.get(stem, mean) for stem in stems]).astype(np.float32)
        rng = np.random.default_rng((self.seed, iteration, rank, 23))
        rows[rng.random(len(rows)) < no_style_p] = mean
        return jt.array(rows)

    def check_checkpoint(self, payload, source):
        """A checkpoint of this run must have been trained on embeddings of the same CLIP weights."""
        if "style_bank" not in payload:
            return
        made_with = StyleBank.from_payload(payload["style_bank"], source=str(source)).weights_sha256
        if made_with != self.model.style_bank.weights_sha256:
            raise CheckpointError(f"{source}: the run was trained on embeddings of other CLIP weights (sha256 "
                                  f"{made_with[:12]}...) than {self.cache_path} holds "
                                  f"({self.model.style_bank.weights_sha256[:12]}...)")
