"""Choosing the noise seed to render a test set with: render it with each candidate seed, measure
each rendering's FID against reference statistics, keep the lowest (APF-GAN kept the best of 20).
Every step is deterministic (per-label noise of `jspade.models.encoder.noise_for`, fixed Inception), so
the same call picks the same seed."""
import numpy as np

from jspade.metrics import fid as fid_metrics


def fid_of_batches(batches, stats, extractor):
    """FID of the images in `batches` (an iterable of lists of H x W x 3 uint8 arrays; only their
    features are kept, so a large set streams) against `stats` (FIDStatistics)."""
    features = [extractor.features(batch) for batch in batches]
    features = np.concatenate(features, axis=0) if features else np.zeros((0, fid_metrics.FEATURE_DIM))
    if len(features) < 2:
        raise ValueError(f"FID needs at least 2 images, got {len(features)}")
    mu, sigma = fid_metrics.compute_statistics(features)
    return fid_metrics.frechet_distance(mu, sigma, stats.mu, stats.sigma)


def best_seed(fids):
    """The seed with the lowest FID ({seed: fid}); the smaller seed on a tie."""
    if not fids:
        raise ValueError("no seeds to choose from")
    return min(fids, key=lambda seed: (fids[seed], seed))


def select_seed(seeds, render_batches, stats, extractor, report=None):
    """({seed: fid}, best seed). `render_batches(seed)` yields the batches of images rendered with
    `seed`; `report(seed, fid)` is called as each is measured."""
    fids = {}
    for seed in seeds:
        fids[seed] = fid_of_batches(render_batches(seed), stats, extractor)
        if report is not None:
            report(seed, fids[seed])
    return fids, best_seed(fids)
