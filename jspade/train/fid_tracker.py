"""FID during training: render the held-out label maps with the (EMA) generator and compare the
renderings' Inception statistics with those of the held-out photos.

The held-out pairs are `data.val_root`, or a fixed fraction of the training pairs chosen by a hash of
each stem (`holdout_stems`: the same stems whatever the subset, order or size of the set), which the
trainer then never trains on. The photos' statistics are computed once per run and cached in the run
folder; the renderings use the fixed noise of `jspade.models.encoder.noise_for` (VAE models), so two
evaluations differ only by the weights.
"""
import hashlib
import math
from pathlib import Path

import numpy as np

from jspade.data.semantics import semantics_for
from jspade.errors import ConfigError
from jspade.data.transforms import to_uint8_images
from jspade.models.encoder import noise_for
from jspade.metrics import fid as fid_metrics
from jspade.runtime import jt
from jspade.safe_load import CheckpointError

REAL_STATS_FILE = "fid_real_stats.npz"


def is_held_out(stem, fraction):
    """True for a fixed `fraction` of stems (by a hash of the stem alone)."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(stem.encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


def drop_samples(dataset, keep):
    """Keep only the samples `keep(sample)` accepts (a dataset's `samples` list and its length)."""
    dataset.samples = [s for s in dataset.samples if keep(s)]
    dataset.set_attrs(total_len=len(dataset.samples))
    return dataset


class HeldOutFID:
    """`measure(netG, netE)` -> FID of the generator's renderings of `dataset` (a paired dataset,
    no augmentation) against its photos."""

    def __init__(self, dataset, opt, cache_path, batch_size=8, seed=0, extractor=None):
        if dataset.total_len < 2:
            raise ConfigError(f"FID during training needs at least 2 held-out pairs, found {dataset.total_len} "
                              "(train.fid_every 0 turns it off)")
        self.dataset, self.opt, self.cache_path = dataset, opt, Path(cache_path)
        self.batch_size, self.seed = batch_size, seed
        self._extractor = extractor
        self._real = None

    @property
    def extractor(self):
        if self._extractor is None:  # loading Inception takes a while: only when first needed
            self._extractor = fid_metrics.InceptionFeatureExtractor(progress=False)
        return self._extractor

    def _batches(self):
        n = self.dataset.total_len
        for start in range(0, n, self.batch_size):
            items = [self.dataset[i] for i in range(start, min(n, start + self.batch_size))]
            yield start, items

    def _fingerprint(self):
        paths = [s.image_path for s in self.dataset.samples]
        h, w = self.dataset[0]["image"].shape[1:]
        return f"{fid_metrics.file_list_fingerprint(paths)}:{w}x{h}"

    def real_statistics(self):
        """The held-out photos' statistics, from the run folder's cache when it matches."""
        if self._real is None:
            fingerprint = self._fingerprint()
            if self.cache_path.is_file():
                cached = fid_metrics.load_statistics(self.cache_path)
                if cached.fingerprint == fingerprint and cached.extractor == fid_metrics.EXTRACTOR_ID:
                    self._real = cached
            if self._real is None:
                images = [img for _, items in self._batches()
                          for img in to_uint8_images(np.stack([it["image"] for it in items]))]
                mu, sigma = fid_metrics.compute_statistics(self.extractor.features(images))
                self._real = fid_metrics.FIDStatistics(mu, sigma, len(images), fingerprint)
                fid_metrics.save_statistics(self.cache_path, self._real)
        return self._real

    def render(self, netG, netE=None):
        """The held-out label maps rendered by `netG` (eval mode) -> list of H x W x 3 uint8."""
        out = []
        with jt.no_grad():
            for start, items in self._batches():
                label = jt.array(np.stack([it["label"] for it in items]).astype(np.int32))
                inst = jt.array(np.stack([it["instance"] for it in items])) if "instance" in items[0] else None
                z = None
                if self.opt.use_vae:
                    z = jt.array(np.stack([noise_for(self.seed, start + i, 0, self.opt.z_dim)
                                           for i in range(len(items))]))
                out += list(to_uint8_images(netG(semantics_for(self.opt, label, inst), z=z)))
        return out

    def measure(self, netG, netE=None):
        real = self.real_statistics()
        mu, sigma = fid_metrics.compute_statistics(self.extractor.features(self.render(netG, netE)))
        return fid_metrics.frechet_distance(mu, sigma, real.mu, real.sigma)


class FIDHistory:
    """(iteration, fid) pairs of a run and its best; kept in checkpoints so a resumed run goes on
    comparing against the best so far."""

    def __init__(self, entries=()):
        self.entries = [(int(i), float(f)) for i, f in entries]

    def add(self, iteration, fid):
        """Record a measurement; True when it is the best (lowest) so far."""
        best = self.best
        self.entries.append((int(iteration), float(fid)))
        return best is None or fid < best[1]

    @property
    def best(self):
        return min(self.entries, key=lambda e: e[1]) if self.entries else None

    @property
    def last(self):
        return self.entries[-1] if self.entries else None


class FIDTracker:
    """FID of a run's generator on `held_out()` (a callable giving the held-out dataset, built at the
    first measurement), with the photos' statistics cached at `cache_path`. Invariant: `history` holds
    every measurement of the run, a resumed run's earlier ones included (`state_dict` goes into each
    checkpoint), so its best is the run's best."""

    def __init__(self, held_out, opt, cache_path, seed=0):
        self.held_out, self.opt, self.cache_path, self.seed = held_out, opt, cache_path, seed
        self.history = FIDHistory()
        self._fid = None

    def measure(self, iteration, netG, netE=None):
        """FID of `netG` (in eval mode) now; recorded. Returns (fid, whether it is the best so far)."""
        if self._fid is None:
            self._fid = HeldOutFID(self.held_out(), self.opt, self.cache_path, seed=self.seed)
        value = self._fid.measure(netG, netE)
        return value, self.history.add(iteration, value)

    def postfix(self):
        """{"fid", "best"} for a progress bar (empty before the first measurement)."""
        if not self.history.entries:
            return {}
        return {"fid": f"{self.history.last[1]:.2f}", "best": f"{self.history.best[1]:.2f}"}

    def state_dict(self):
        return list(self.history.entries)

    def load_state_dict(self, entries):
        """`entries`: (iteration >= 0, finite fid) pairs, as state_dict gives; CheckpointError otherwise."""
        try:
            checked = [(int(i), float(f)) for i, f in entries]
        except (TypeError, ValueError):
            raise CheckpointError(f"malformed fid_history {entries!r:.100}") from None
        if any(i < 0 or not math.isfinite(f) for i, f in checked):
            raise CheckpointError(f"fid_history holds a negative iteration or a non-finite FID: {entries!r:.100}")
        self.history = FIDHistory(checked)
